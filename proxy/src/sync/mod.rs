//! Where config comes from: YAML files on disk (`manifests`, standalone mode) or the
//! operator's config service (`operator`). Either way the result is a Runtime swapped
//! into the gateway.

pub mod manifests;
pub mod operator;

use std::sync::Arc;

use crate::gateway::Gateway;
use crate::settings::Settings;

/// Keeps config flowing into the gateway until dropped.
pub struct SyncGuard(#[allow(dead_code)] Box<dyn std::any::Any + Send>);

impl std::fmt::Debug for SyncGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SyncGuard")
    }
}

/// Loads the first config (or, from the operator, starts waiting for it) and keeps it
/// current.
pub fn start(settings: &Settings, gateway: Arc<Gateway>) -> anyhow::Result<SyncGuard> {
    if let Some(url) = &settings.operator {
        let (Some(token_file), Some(ca_file)) =
            (&settings.operator_token_file, &settings.operator_ca_file)
        else {
            anyhow::bail!("--operator needs --operator-token-file and --operator-ca-file");
        };
        let config = operator::OperatorConfig {
            url: url.clone(),
            token_file: token_file.clone(),
            ca_file: ca_file.clone(),
            cache: settings.snapshot_cache.clone(),
            proxy_id: settings.proxy_id.clone(),
        };
        return Ok(SyncGuard(Box::new(operator::start(config, gateway)?)));
    }
    let Some(dir) = &settings.manifests else {
        anyhow::bail!("give --manifests DIR (standalone) or --operator URL");
    };
    Ok(SyncGuard(Box::new(manifests::start(dir.clone(), gateway)?)))
}
