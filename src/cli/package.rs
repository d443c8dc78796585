//! `package`: assemble the deployable function app — host.json, one folder per function with
//! its function.json, this Linux x86-64 binary and, with `--policy`, the rollout policy as
//! `rollout.json` — plus a zip that
//! `az functionapp deployment source config-zip` accepts (files at the zip root).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;

use super::common::Global;
use super::exit::Exit;
use crate::policy::Policy;

/// The app definition, compiled in from the repository so the binary packages itself.
const HOST_JSON: &str = include_str!("../../host.json");
const FUNCTIONS: [(&str, &str); 4] = [
    (
        "step",
        include_str!("../../function-definitions/step/function.json"),
    ),
    (
        "on-deploy",
        include_str!("../../function-definitions/on-deploy/function.json"),
    ),
    (
        "rollout-tick",
        include_str!("../../function-definitions/rollout-tick/function.json"),
    ),
    (
        "status",
        include_str!("../../function-definitions/status/function.json"),
    ),
];
const EXECUTABLE: &str = "vnet-migrate";
/// The policy's name in the app root, where `serve` looks for it (DESIGN §7).
const POLICY: &str = "rollout.json";

#[derive(Debug, ClapArgs)]
pub(crate) struct Args {
    /// Output folder; the zip is written beside it as FOLDER.zip.
    #[arg(
        long = "out-file",
        value_name = "DIR",
        default_value = "dist/functionapp"
    )]
    pub(crate) out: PathBuf,
    /// Rollout policy to ship as the app's `rollout.json` (where `serve` reads it: its waves,
    /// bake and gate drive `rollout-tick`); checked before anything is written.
    #[arg(long, value_name = "FILE.json")]
    pub(crate) policy: Option<PathBuf>,
}

pub(crate) async fn run(_global: &Global, args: Args) -> Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot locate this executable")?;
    let binary = std::fs::read(&exe).with_context(|| format!("cannot read {}", exe.display()))?;
    check_linux_x86_64(&binary)?;
    let policy = match &args.policy {
        Some(p) => {
            Policy::load(p).with_context(|| format!("--policy {}", p.display()))?;
            Some(std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?)
        }
        None => None,
    };
    let files = app_files(binary, policy);
    write_folder(&args.out, &files)?;
    let zip_path = PathBuf::from(format!("{}.zip", args.out.display()));
    write_zip(&zip_path, &files)?;
    eprintln!("wrote {} and {}", args.out.display(), zip_path.display());
    println!("{}", zip_path.display());
    Ok(Exit::Done.into())
}

/// (path inside the app, contents, executable?)
fn app_files(binary: Vec<u8>, policy: Option<Vec<u8>>) -> Vec<(String, Vec<u8>, bool)> {
    let mut files = vec![(
        "host.json".to_string(),
        HOST_JSON.as_bytes().to_vec(),
        false,
    )];
    for (name, json) in FUNCTIONS {
        files.push((
            format!("{name}/function.json"),
            json.as_bytes().to_vec(),
            false,
        ));
    }
    if let Some(policy) = policy {
        files.push((POLICY.to_string(), policy, false));
    }
    files.push((EXECUTABLE.to_string(), binary, true));
    files
}

/// App Service on Linux runs x86-64 ELF binaries; refuse to package anything else.
fn check_linux_x86_64(b: &[u8]) -> Result<()> {
    let elf = b.len() > 20 && &b[..4] == b"\x7fELF";
    let x86_64 = elf && b[4] == 2 && u16::from_le_bytes([b[18], b[19]]) == 0x3e;
    anyhow::ensure!(x86_64, "this binary is not a Linux x86-64 executable; build with --target x86_64-unknown-linux-gnu and package with that binary");
    Ok(())
}

fn write_folder(dir: &Path, files: &[(String, Vec<u8>, bool)]) -> Result<()> {
    for (path, data, exec) in files {
        let p = dir.join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&p, data).with_context(|| format!("cannot write {}", p.display()))?;
        #[cfg(unix)]
        if *exec {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    Ok(())
}

fn write_zip(path: &Path, files: &[(String, Vec<u8>, bool)]) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let f =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut zip = zip::ZipWriter::new(f);
    for (name, data, exec) in files {
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(if *exec { 0o755 } else { 0o644 });
        zip.start_file(name.as_str(), opts)?;
        zip.write_all(data)?;
    }
    zip.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_definition_is_valid_json_and_names_the_binary() {
        let host: serde_json::Value = serde_json::from_str(HOST_JSON).unwrap();
        assert_eq!(
            host["customHandler"]["description"]["defaultExecutablePath"],
            EXECUTABLE
        );
        assert_eq!(
            host["customHandler"]["description"]["arguments"][0],
            "serve"
        );
        for (name, json) in FUNCTIONS {
            let f: serde_json::Value =
                serde_json::from_str(json).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(
                f["bindings"].as_array().is_some_and(|b| !b.is_empty()),
                "{name}"
            );
        }
        let step: serde_json::Value = serde_json::from_str(FUNCTIONS[0].1).unwrap();
        assert_eq!(step["bindings"][0]["isSessionsEnabled"], true);
        assert_eq!(step["bindings"][0]["dataType"], "binary");
    }

    #[test]
    fn zip_has_files_at_the_root_and_an_executable_binary() {
        let dir = std::env::temp_dir().join(format!("vnet-migrate-pkg-{}", uuid::Uuid::new_v4()));
        let zip_path = dir.join("app.zip");
        write_zip(
            &zip_path,
            &app_files(b"\x7fELF-fake".to_vec(), Some(b"{}".to_vec())),
        )
        .unwrap();
        let mut z = zip::ZipArchive::new(std::fs::File::open(&zip_path).unwrap()).unwrap();
        let names: Vec<String> = (0..z.len())
            .map(|i| z.by_index(i).unwrap().name().unwrap().to_string())
            .collect();
        assert!(names.contains(&"host.json".to_string()));
        assert!(names.contains(&"step/function.json".to_string()));
        let mut policy = String::new();
        std::io::Read::read_to_string(&mut z.by_name(POLICY).unwrap(), &mut policy).unwrap();
        assert_eq!(policy, "{}", "the policy is shipped as given");
        assert_eq!(app_files(Vec::new(), None).len(), FUNCTIONS.len() + 2);
        let bin = z.by_name(EXECUTABLE).unwrap();
        assert_eq!(bin.unix_mode().unwrap() & 0o777, 0o755);
        drop(bin);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_non_elf() {
        assert!(check_linux_x86_64(b"MZ\x90\x00 not elf at all......").is_err());
    }
}
