//! A configuration for `make up CONFIG=my.yaml`, merged with what only the local stack can
//! know, every value changed listed: `registry` (the local registry), SSM `instances` (the
//! local host's tags; instance ids become a tag, since the host's id is made up), host ports
//! (a free one where the file's is taken or privileged), container names (made unique per
//! environment, all environments sharing one host) and smoke-check URLs (the published port
//! on 127.0.0.1). Environments that deploy to ECS or CodeDeploy are refused: the local stack
//! has an SSM host only.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, anyhow, bail};
use serde_norway::{Mapping, Value as Yaml};

use crate::moto::free_port;

/// The tag put on the local host when an environment names instance ids.
pub const DEFAULT_TAG: (&str, &str) = ("pushdeploy-local", "host");

/// A configuration merged with the local stack's values.
#[derive(Debug, Clone)]
pub struct Merged {
    pub yaml: String,
    /// What was changed: `apps.web.registry: localhost:5000 (the local registry)`.
    pub changes: Vec<String>,
    /// Tags the local host must carry so that every SSM environment selects it.
    pub host_tags: BTreeMap<String, String>,
    /// The first SSM environment: (app, environment, repository, published host port).
    pub first: (String, String, String, Option<u16>),
    /// Every repository the configuration names.
    pub repositories: Vec<String>,
}

/// Merges `user` (a pushdeploy configuration) with the local registry's host.
pub fn merge(user: &str, registry_host: &str) -> anyhow::Result<Merged> {
    let mut doc: Yaml = serde_norway::from_str(user).context("the configuration is not YAML")?;
    let apps = doc
        .get_mut("apps")
        .and_then(Yaml::as_mapping_mut)
        .ok_or_else(|| anyhow!("the configuration has no `apps` mapping"))?;
    let mut changes = Vec::new();
    let mut host_tags = BTreeMap::new();
    let mut first = None;
    let mut repositories = Vec::new();
    let mut containers: BTreeMap<String, String> = BTreeMap::new();
    for (app_key, app) in apps.iter_mut() {
        let app_name = key(app_key)?;
        let app_map = mapping(app, &format!("apps.{app_name}"))?;
        let repository = app_map
            .get("repository")
            .and_then(Yaml::as_str)
            .ok_or_else(|| anyhow!("apps.{app_name}.repository is missing"))?
            .to_owned();
        repositories.push(repository.clone());
        let previous = app_map.insert("registry".into(), registry_host.into());
        changes.push(format!(
            "apps.{app_name}.registry: {registry_host} (the local registry{})",
            match previous.as_ref().and_then(Yaml::as_str) {
                Some(p) => format!("; was {p}"),
                None => "; in AWS, leave it out: ECR of the stack's account".into(),
            }
        ));
        let Some(envs) = app_map
            .get_mut("environments")
            .and_then(Yaml::as_mapping_mut)
        else {
            continue;
        };
        for (env_key, env) in envs.iter_mut() {
            let env_name = key(env_key)?;
            let path = format!("apps.{app_name}.environments.{env_name}");
            let env_map = mapping(env, &path)?;
            let target = env_map
                .get_mut("target")
                .and_then(Yaml::as_mapping_mut)
                .ok_or_else(|| anyhow!("{path}.target is missing"))?;
            for other in ["ecs", "codedeploy"] {
                if target.contains_key(other) {
                    bail!(
                        "{path}.target.{other}: the local stack deploys to its container host through SSM only; \
                         give `make up` a configuration whose environments use `target: {{ ssm: … }}`"
                    );
                }
            }
            let ssm = target
                .get_mut("ssm")
                .and_then(Yaml::as_mapping_mut)
                .ok_or_else(|| anyhow!("{path}.target.ssm is missing"))?;
            select_host(ssm, &path, &mut host_tags, &mut changes)?;
            // A missing name is left for pushdeploy to refuse, naming the field.
            if let Some(container) = ssm
                .get("container")
                .and_then(Yaml::as_str)
                .map(str::to_owned)
            {
                if let Some(owner) = containers.get(&container) {
                    let unique = format!("{container}-{app_name}-{env_name}");
                    ssm.insert("container".into(), unique.clone().into());
                    changes.push(format!(
                        "{path}.target.ssm.container: {unique} (was {container}, also {owner}'s, on the one local host)"
                    ));
                    containers.insert(unique, path.clone());
                } else {
                    containers.insert(container, path.clone());
                }
            }
            let port = publish_ports(ssm, &path, &mut changes)?;
            if let Some(port) = port {
                rewrite_smoke_urls(env_map, &path, port, &mut changes)?;
            }
            if first.is_none() {
                first = Some((app_name.clone(), env_name, repository.clone(), port));
            }
        }
    }
    let first = first.ok_or_else(|| anyhow!("the configuration has no environment"))?;
    Ok(Merged {
        yaml: serde_norway::to_string(&doc)?,
        changes,
        host_tags,
        first,
        repositories,
    })
}

/// Reads a configuration file given to `up`.
pub fn read_config(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn mapping<'a>(value: &'a mut Yaml, path: &str) -> anyhow::Result<&'a mut Mapping> {
    value
        .as_mapping_mut()
        .ok_or_else(|| anyhow!("{path} is not a mapping"))
}

fn key(k: &Yaml) -> anyhow::Result<String> {
    k.as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("a key of the configuration is not a string: {k:?}"))
}

/// Makes `instances` select the local host: its tags are the environment's own when they
/// agree with the other environments', else the local host's.
fn select_host(
    ssm: &mut Mapping,
    path: &str,
    host_tags: &mut BTreeMap<String, String>,
    changes: &mut Vec<String>,
) -> anyhow::Result<()> {
    let tags: Option<BTreeMap<String, String>> = ssm
        .get("instances")
        .and_then(|i| i.get("tag"))
        .and_then(Yaml::as_mapping)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), scalar(v)?)))
                .collect()
        });
    let agrees = |tags: &BTreeMap<String, String>| {
        tags.iter()
            .all(|(k, v)| host_tags.get(k).is_none_or(|have| have == v))
    };
    match tags {
        Some(tags) if !tags.is_empty() && agrees(&tags) => {
            host_tags.extend(tags);
            Ok(())
        }
        _ => {
            let (k, v) = DEFAULT_TAG;
            host_tags.insert(k.to_owned(), v.to_owned());
            let mut tag = Mapping::new();
            tag.insert(k.into(), v.into());
            let mut instances = Mapping::new();
            instances.insert("tag".into(), Yaml::Mapping(tag));
            ssm.insert("instances".into(), Yaml::Mapping(instances));
            changes.push(format!(
                "{path}.target.ssm.instances: {{ tag: {{ {k}: {v} }} }} (the local host's tag)"
            ));
            Ok(())
        }
    }
}

fn scalar(v: &Yaml) -> Option<String> {
    match v {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Gives every published port a free host port; returns the first.
fn publish_ports(
    ssm: &mut Mapping,
    path: &str,
    changes: &mut Vec<String>,
) -> anyhow::Result<Option<u16>> {
    let Some(ports) = ssm.get_mut("ports").and_then(Yaml::as_sequence_mut) else {
        return Ok(None);
    };
    let mut first = None;
    for (i, entry) in ports.iter_mut().enumerate() {
        let Some(text) = entry.as_str().map(str::to_owned) else {
            continue;
        };
        let container_side = match text.rsplit_once(':') {
            Some((_, c)) => c.to_owned(),
            None => text.clone(),
        };
        let wanted = text
            .rsplit_once(':')
            .and_then(|(h, _)| h.rsplit(':').next()?.parse::<u16>().ok());
        let host = match wanted {
            Some(p) if p >= 1024 && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() => p,
            _ => {
                let host = free_port()?;
                let published = format!("{host}:{container_side}");
                *entry = published.clone().into();
                changes.push(format!(
                    "{path}.target.ssm.ports[{i}]: \"{published}\" (was \"{text}\": a free host port)"
                ));
                host
            }
        };
        first.get_or_insert(host);
    }
    Ok(first)
}

/// Points the smoke checks at the port the host publishes, keeping their paths.
fn rewrite_smoke_urls(
    env: &mut Mapping,
    path: &str,
    port: u16,
    changes: &mut Vec<String>,
) -> anyhow::Result<()> {
    let Some(checks) = env
        .get_mut("smoke")
        .and_then(|s| s.get_mut("checks"))
        .and_then(Yaml::as_sequence_mut)
    else {
        return Ok(());
    };
    for (i, check) in checks.iter_mut().enumerate() {
        let Some(url) = check.get("url").and_then(Yaml::as_str).map(str::to_owned) else {
            continue;
        };
        let rest = url
            .split_once("://")
            .map(|(_, r)| r)
            .unwrap_or(&url)
            .to_owned();
        let path_part = rest.find('/').map(|i| &rest[i..]).unwrap_or("/");
        let local = format!("http://127.0.0.1:{port}{path_part}");
        if local != url
            && let Some(m) = check.as_mapping_mut()
        {
            m.insert("url".into(), local.clone().into());
            changes.push(format!(
                "{path}.smoke.checks[{i}].url: {local} (was {url}: the host's published port)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: &str = r#"
apps:
  shop:
    repository: acme/shop
    registry: 111122223333.dkr.ecr.eu-west-1.amazonaws.com
    environments:
      staging:
        deploy_on_push: { tags: ["v*"] }
        target:
          ssm:
            instances: { tag: { Role: shop } }
            container: shop
            ports: ["80:8080"]
        smoke:
          checks:
            - { url: "https://shop.example.com/health?deep=1", expect_status: 200 }
      production:
        promote_from: staging
        target:
          ssm:
            instances: { ids: [i-0123456789abcdef0] }
            container: shop
            ports: ["443:8080"]
"#;

    #[test]
    fn a_users_configuration_gets_the_local_registry_host_ports_and_host() {
        let m = merge(USER, "localhost:5000").unwrap();
        let doc: Yaml = serde_norway::from_str(&m.yaml).unwrap();
        let shop = &doc["apps"]["shop"];
        assert_eq!(shop["registry"].as_str(), Some("localhost:5000"));
        let staging = &shop["environments"]["staging"]["target"]["ssm"];
        let production = &shop["environments"]["production"]["target"]["ssm"];
        assert_eq!(staging["instances"]["tag"]["Role"].as_str(), Some("shop"));
        assert_eq!(
            production["instances"]["tag"]["pushdeploy-local"].as_str(),
            Some("host")
        );
        assert_eq!(staging["container"].as_str(), Some("shop"));
        assert_eq!(
            production["container"].as_str(),
            Some("shop-shop-production")
        );
        let port = m.first.3.unwrap();
        assert_eq!(
            staging["ports"][0].as_str().unwrap(),
            format!("{port}:8080")
        );
        assert_eq!(
            shop["environments"]["staging"]["smoke"]["checks"][0]["url"]
                .as_str()
                .unwrap(),
            format!("http://127.0.0.1:{port}/health?deep=1")
        );
        assert_eq!(
            m.host_tags,
            BTreeMap::from([
                ("Role".to_owned(), "shop".to_owned()),
                ("pushdeploy-local".to_owned(), "host".to_owned()),
            ])
        );
        assert_eq!(m.first.0, "shop");
        assert_eq!(m.first.1, "staging");
        assert_eq!(m.repositories, ["acme/shop"]);
        assert!(
            m.changes.iter().any(|c| c.starts_with(
                "apps.shop.registry: localhost:5000 (the local registry; was 111122223333"
            )),
            "{:?}",
            m.changes
        );
        assert_eq!(m.changes.len(), 6, "{:#?}", m.changes);
    }

    #[test]
    fn an_ecs_environment_is_refused_with_its_path() {
        let yaml = "apps:\n  web:\n    repository: acme/web\n    environments:\n      prod:\n        target:\n          ecs: { cluster: c, service: s }\n";
        let err = merge(yaml, "localhost:5000").unwrap_err().to_string();
        assert!(
            err.starts_with("apps.web.environments.prod.target.ecs: the local stack deploys to its container host through SSM only"),
            "{err}"
        );
    }
}
