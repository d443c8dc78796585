//! Values the builder derives by hashing (resource GUIDs, etags, app certificates), so the
//! same calls always produce byte-identical JSON.

use sha2::{Digest, Sha256};

use crate::azure::ResourceId;

fn digest(parts: &[&str]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    h.finalize().into()
}

pub(super) fn uuid_from(parts: &[&str]) -> String {
    let d = digest(parts);
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&d[..16]);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

pub(super) fn etag(parts: &[&str]) -> String {
    format!("W/\"{}\"", uuid_from(&[&parts.join("|"), "etag"]))
}

/// The app-side certificate App Service issues for gateway-based integration: one per
/// subscription × VNet (arm-vnet reference §2.2, step 1), as `(certThumbprint, certBlob)`.
/// Shared by the builder (fleets) and the simulator's declare PUT, so a re-declared connection
/// gets the certificate the gateway already trusts.
pub(crate) fn app_certificate(subscription: &str, vnet: &ResourceId) -> (String, String) {
    let sub = subscription.to_ascii_lowercase();
    let seed = [sub.as_str(), vnet.key()];
    (hex::encode_upper(&digest(&seed)[..20]), cert_blob(&seed))
}

/// A deterministic stand-in for the app's public certificate (DER-looking bytes, base64).
fn cert_blob(parts: &[&str]) -> String {
    let mut bytes = vec![0x30, 0x82, 0x01, 0x0a];
    for i in 0..8u8 {
        let salt = i.to_string();
        let mut p: Vec<&str> = parts.to_vec();
        p.push(&salt);
        bytes.extend_from_slice(&digest(&p));
    }
    base64(&bytes)
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= c.len() {
                out.push(A[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want);
        }
    }
}
