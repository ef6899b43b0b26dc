//! The revision bundle of an EC2/on-premises rollout: an appspec whose hooks run the SSM
//! document's own script, with every parameter substituted, pinned to the digest.

use crate::domain::Deployment;
use crate::domain::config::CodeDeployHosts;
use crate::ports::TargetError;

use super::super::ssm::document_parameters;

/// The SSM document's script, with `{{ Name }}` where Run Command substitutes parameters;
/// `template.yaml` carries the same lines (a test keeps them equal).
pub const DOCUMENT_SCRIPT: &str = include_str!("deploy.sh");

const APPLICATION_STOP: &str = include_str!("application-stop.sh");
const BEFORE_INSTALL: &str = include_str!("before-install.sh");
const APPLICATION_START: &str = include_str!("application-start.sh");
const VALIDATE_SERVICE: &str = include_str!("validate-service.sh");

/// The files of a revision bundle, in order: (path, mode, content).
pub fn bundle_files(
    dep: &Deployment,
    hosts: &CodeDeployHosts,
    region: &str,
) -> Result<Vec<(&'static str, u32, String)>, TargetError> {
    let region_ok = {
        let mut parts = region.split('-');
        let first = parts.next().unwrap_or_default();
        let rest: Vec<&str> = parts.collect();
        first.len() == 2
            && first.bytes().all(|b| b.is_ascii_lowercase())
            && rest.len() >= 2
            && rest
                .last()
                .is_some_and(|n| n.len() == 1 && n.as_bytes()[0].is_ascii_digit())
            && rest[..rest.len() - 1]
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
    };
    if !region_ok {
        return Err(TargetError::Invalid(format!(
            "{region:?} is not an AWS region; set the function's region"
        )));
    }
    let values = document_parameters(
        dep,
        region.to_owned(),
        &hosts.container,
        &hosts.ports,
        &hosts.health,
        hosts.timeout,
    );
    // Every value is validated (digest-pinned image, configured names, a ULID), and the
    // script checks each again; none can hold a quote.
    let mut script = DOCUMENT_SCRIPT.to_owned();
    for (name, value) in &values {
        script = script.replace(&format!("{{{{ {name} }}}}"), value);
    }
    let value = |name: &str| {
        values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    };
    use super::super::ssm::params;
    let params_sh = format!(
        "# The values of pushdeploy deployment {id}, for the hooks.\n\
         image='{image}'\nregistry='{registry}'\nregion='{region}'\ncontainer='{container}'\n\
         health_port='{port}'\nhealth_path='{path}'\n",
        id = dep.id,
        image = value(params::IMAGE),
        registry = value(params::REGISTRY),
        region = value(params::REGION),
        container = value(params::CONTAINER),
        port = value(params::HEALTH_PORT),
        path = value(params::HEALTH_PATH),
    );
    let validate_timeout = hosts.health.timeout.as_secs() + 60;
    let appspec = format!(
        "version: 0.0\n\
         os: linux\n\
         hooks:\n\
         \x20 ApplicationStop:\n\
         \x20   - location: hooks/application-stop.sh\n\
         \x20     timeout: 60\n\
         \x20 BeforeInstall:\n\
         \x20   - location: hooks/before-install.sh\n\
         \x20     timeout: 900\n\
         \x20 ApplicationStart:\n\
         \x20   - location: hooks/application-start.sh\n\
         \x20     timeout: {start}\n\
         \x20 ValidateService:\n\
         \x20   - location: hooks/validate-service.sh\n\
         \x20     timeout: {validate_timeout}\n",
        start = hosts.timeout.as_secs(),
    );
    Ok(vec![
        ("appspec.yml", 0o644, appspec),
        (
            "hooks/application-stop.sh",
            0o755,
            APPLICATION_STOP.to_owned(),
        ),
        ("hooks/before-install.sh", 0o755, BEFORE_INSTALL.to_owned()),
        (
            "hooks/application-start.sh",
            0o755,
            APPLICATION_START.to_owned(),
        ),
        (
            "hooks/validate-service.sh",
            0o755,
            VALIDATE_SERVICE.to_owned(),
        ),
        ("pushdeploy/params.sh", 0o644, params_sh),
        ("pushdeploy/deploy.sh", 0o755, script),
    ])
}

/// The bundle as a tar archive.
pub fn tar(files: &[(&str, u32, String)], mtime: u64) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, mode, content) in files {
        let mut header = tar::Header::new_ustar();
        header.set_size(content.len() as u64);
        header.set_mode(*mode);
        header.set_mtime(mtime);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, path, content.as_bytes())?;
    }
    builder.into_inner()
}

#[cfg(test)]
pub(super) mod tests {
    use std::io::Read;

    use super::super::target::tests::{fixture, hosts};
    use super::*;

    pub(in crate::adapters::codedeploy) fn untar(bytes: &[u8]) -> Vec<(String, u32, String)> {
        let mut archive = tar::Archive::new(bytes);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = e.path().unwrap().display().to_string();
                let mode = e.header().mode().unwrap();
                let mut text = String::new();
                e.read_to_string(&mut text).unwrap();
                (path, mode, text)
            })
            .collect()
    }

    #[test]
    fn the_bundle_pins_the_digest_and_runs_the_document_script_in_application_start() {
        let (dep, target) = fixture("production");
        let files = bundle_files(&dep, &hosts(&target), "eu-west-1").unwrap();
        let bytes = tar(&files, 0).unwrap();
        let unpacked = untar(&bytes);
        let paths: Vec<&str> = unpacked.iter().map(|(p, _, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "appspec.yml",
                "hooks/application-stop.sh",
                "hooks/before-install.sh",
                "hooks/application-start.sh",
                "hooks/validate-service.sh",
                "pushdeploy/params.sh",
                "pushdeploy/deploy.sh"
            ]
        );
        let file = |p: &str| unpacked.iter().find(|(path, _, _)| path == p).unwrap();
        let appspec: serde_json::Value = serde_norway::from_str(&file("appspec.yml").2).unwrap();
        let hooks = appspec["hooks"].as_object().unwrap();
        assert_eq!(
            hooks.keys().collect::<Vec<_>>(),
            [
                "ApplicationStop",
                "BeforeInstall",
                "ApplicationStart",
                "ValidateService"
            ]
        );
        for (hook, spec) in hooks {
            let location = spec[0]["location"].as_str().unwrap();
            let (_, mode, _) = file(location);
            assert_eq!(*mode, 0o755, "{hook}: {location} is executable");
        }
        assert_eq!(appspec["hooks"]["ApplicationStart"][0]["timeout"], 600);
        let image = dep.image.to_string();
        let params = &file("pushdeploy/params.sh").2;
        assert!(params.contains(&format!("image='{image}'\n")), "{params}");
        assert!(params.contains("health_path='/health'\n"), "{params}");
        let script = &file("pushdeploy/deploy.sh").2;
        assert!(!script.contains("{{"), "every parameter is substituted");
        assert!(script.contains(&format!("image='{image}'")));
        assert!(script.contains(&format!("deployment_id='{}'", dep.id)));
        assert!(script.contains("ports='80:8000'"));
        // Everything but the assignments is the document's script, line for line.
        let template_lines: Vec<&str> = DOCUMENT_SCRIPT.lines().collect();
        let lines: Vec<&str> = script.lines().collect();
        assert_eq!(lines.len(), template_lines.len());
        for (got, want) in lines.iter().zip(&template_lines) {
            if !want.contains("{{") {
                assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn a_region_that_is_not_one_is_refused_before_anything_is_built() {
        let (dep, target) = fixture("production");
        for region in ["", "eu-west-1'; rm -rf /", "EU-WEST-1", "eu-1"] {
            assert!(
                bundle_files(&dep, &hosts(&target), region).is_err(),
                "{region:?}"
            );
        }
        for region in ["eu-west-1", "us-gov-west-1", "ap-southeast-2"] {
            assert!(
                bundle_files(&dep, &hosts(&target), region).is_ok(),
                "{region:?}"
            );
        }
    }
}
