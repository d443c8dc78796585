//! VPN gateways (`Microsoft.Network/virtualNetworkGateways`): the point-to-site root
//! certificates gateway-based App Service integration relies on, and the VPN client packages
//! handed to apps (arm-vnet reference §2.2, step 2).
//!
//! The reference leaves the exact Network REST shapes of this step open (§12 item 7); what is
//! modelled follows the Network spec (`virtualNetworkGateway.json` in
//! Azure/azure-rest-api-specs: `vpnClientConfiguration.vpnClientRootCertificates[{name,
//! properties.publicCertData}]`; `VirtualNetworkGateways_Generatevpnclientpackage`, a POST
//! LRO answering 202 and finally the package URL as a JSON string, read from `Location`).
//! Error codes of refusals are not documented there: each is marked where it is chosen, and
//! the simulator refuses rather than accepts when unsure.

use serde_json::{json, Value};
use std::borrow::Cow;

use super::subnet::arr;
use super::validate::bad;
use super::{network_lro, operation_url, set_provisioning};
use crate::azure::ResourceId;
use crate::sim::reply::{Ctx, Reply};
use crate::sim::state::{State, VpnPackage};
use crate::sim::store::Ref;

/// `ProcessorArchitecture` of the spec's `VpnClientParameters`.
const ARCHITECTURES: [&str; 2] = ["Amd64", "X86"];

/// The `publicCertData` of every P2S root certificate of a gateway.
fn root_certificates(gw: &Value) -> Vec<String> {
    arr(
        gw,
        &[
            "properties",
            "vpnClientConfiguration",
            "vpnClientRootCertificates",
        ],
    )
    .iter()
    .filter_map(|c| c["properties"]["publicCertData"].as_str().map(String::from))
    .collect()
}

/// Whether the gateway trusts `cert_blob` (an app's `certBlob`) as a P2S root certificate.
pub(crate) fn trusts(gw: &Value, cert_blob: &str) -> bool {
    root_certificates(gw).iter().any(|c| c == cert_blob)
}

/// The VNets a gateway is attached to: those of the subnets its ip configurations sit in
/// (`properties.ipConfigurations[].properties.subnet.id`, as ARM shows it).
pub(crate) fn gateway_vnets(gw: &Value) -> Vec<ResourceId> {
    let mut out: Vec<ResourceId> = arr(gw, &["properties", "ipConfigurations"])
        .iter()
        .filter_map(|c| {
            c["properties"]["subnet"]["id"]
                .as_str()
                .and_then(|s| ResourceId::parse(s).ok())
                .and_then(|s| s.vnet())
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The gateway attached to `vnet` (the first in id order), from the store's index.
pub(crate) fn gateway_of_vnet(st: &State, vnet: &ResourceId) -> Option<ResourceId> {
    st.store
        .referrers(Ref::GatewayVnet, vnet)
        .find_map(|(_, gw)| {
            gw.value()["id"]
                .as_str()
                .and_then(|i| ResourceId::parse(i).ok())
        })
}

/// `PUT …/virtualNetworkGateways/{gw}`: replaces the gateway (standard ARM PUT, like other
/// Network writes, arm-vnet reference §5) as a Network LRO that locks the gateway meanwhile
/// (`contention`).
pub(crate) fn put_gateway(st: &mut State, ctx: &Ctx, id: &ResourceId, body: &Value) -> Reply {
    if !body.is_object() {
        return bad(
            "InvalidRequestFormat",
            "The request body must be a JSON object.".into(),
        );
    }
    let Some(location) = body["location"].as_str().map(String::from) else {
        return bad(
            "LocationRequired",
            "The location property is required for this definition.".into(),
        );
    };
    // A gateway lives in its GatewaySubnet: a PUT without ip configurations would detach it.
    // (Refusal code not documented; refusing is the stricter choice.)
    if arr(body, &["properties", "ipConfigurations"]).is_empty() {
        return bad(
            "InvalidRequestFormat",
            format!("Virtual network gateway {} needs at least one ip configuration in its GatewaySubnet.", id.as_str()),
        );
    }
    let old = st.store.get(id).map(Cow::into_owned);
    let mut gw = body.clone();
    let mut names: Vec<String> = Vec::new();
    if let Some(certs) =
        gw["properties"]["vpnClientConfiguration"]["vpnClientRootCertificates"].as_array_mut()
    {
        for c in certs.iter_mut() {
            let name = c["name"].as_str().unwrap_or_default().to_string();
            let data = c["properties"]["publicCertData"]
                .as_str()
                .unwrap_or_default();
            // Refusal codes not documented; a nameless, empty or duplicate root certificate is
            // refused rather than stored.
            if name.is_empty() || data.trim().is_empty() {
                return bad(
                    "InvalidRequestFormat",
                    "Every vpnClientRootCertificate needs a name and properties.publicCertData."
                        .into(),
                );
            }
            if names.iter().any(|n| n.eq_ignore_ascii_case(&name)) {
                return bad(
                    "InvalidRequestFormat",
                    format!("Root certificate name {name} is used twice."),
                );
            }
            c["id"] = json!(format!("{}/vpnClientRootCertificates/{name}", id.as_str()));
            c["properties"]["provisioningState"] = json!("Succeeded");
            names.push(name);
        }
    }
    let guid = old
        .as_ref()
        .and_then(|o| o["properties"]["resourceGuid"].as_str().map(String::from))
        .unwrap_or_else(|| st.uuid());
    let etag = st.etag();
    gw["id"] = json!(id.as_str());
    gw["name"] = json!(id.name());
    gw["type"] = json!("Microsoft.Network/virtualNetworkGateways");
    gw["etag"] = json!(etag);
    if !gw["properties"].is_object() {
        gw["properties"] = json!({});
    }
    gw["properties"]["resourceGuid"] = json!(guid);
    gw["properties"]["provisioningState"] = json!("Succeeded");
    st.store.put(id, gw.clone());
    let status = if old.is_some() { 200 } else { 201 };
    let reply = Reply::new(status, set_provisioning(&gw, "Updating"));
    network_lro(st, ctx, id, id, &location, reply)
}

/// `POST …/virtualNetworkGateways/{gw}/generatevpnclientpackage`: 202 with `Location` and
/// `Azure-AsyncOperation`; the `Location` URL ends with the package's SAS URL (a JSON string).
/// The package records the root certificates the gateway trusts now: an app whose certificate
/// is added later needs a new package (checked when the package is handed to the app).
pub(crate) fn generate_package(
    st: &mut State,
    ctx: &Ctx,
    gw_id: &ResourceId,
    body: &Value,
) -> Reply {
    let Some(gw) = st.store.get(gw_id).map(Cow::into_owned) else {
        return Reply::not_found(gw_id.as_str());
    };
    let Some(arch) = body["processorArchitecture"].as_str().and_then(|a| {
        ARCHITECTURES
            .iter()
            .find(|k| k.eq_ignore_ascii_case(a))
            .copied()
    }) else {
        return bad(
            "InvalidRequestFormat",
            format!(
                "processorArchitecture must be one of {}.",
                ARCHITECTURES.join(", ")
            ),
        );
    };
    let roots = root_certificates(&gw);
    // Without a P2S root certificate there is nothing a package could authenticate with.
    // (Refusal code not documented; refusing is the stricter choice.)
    if roots.is_empty() {
        return bad(
            "VpnClientRootCertificatesMissing",
            format!(
                "Virtual network gateway {} has no point-to-site root certificate.",
                gw_id.as_str()
            ),
        );
    }
    let token = st.uuid();
    let sig = st.uuid().replace('-', "");
    // Never fetched: App Service downloads it in Azure; the simulator only recognises it.
    let url = format!(
        "https://vpnclientpackages.blob.core.windows.net/p2s/{token}/{}/package.zip?sv=2024-08-04&sr=b&sp=r&sig={sig}",
        arch.to_ascii_lowercase()
    );
    st.vpn_packages.insert(
        url.clone(),
        VpnPackage {
            gateway: gw_id.key().to_string(),
            root_certificates: roots,
        },
    );
    let d = st.work;
    let (op, fails) = st.start_operation();
    if !fails {
        if let Some(o) = st.operations.get_mut(&op) {
            o.result = Some(json!(url));
        }
    }
    let location = gw["location"].as_str().unwrap_or("westeurope");
    Reply::empty(202)
        .header(
            "Location",
            operation_url(ctx, gw_id, location, "operationResults", &op),
        )
        .header(
            "Azure-AsyncOperation",
            operation_url(ctx, gw_id, location, "operations", &op),
        )
        .header("Retry-After", State::retry_after(d))
}
