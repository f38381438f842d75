//! `exec`: a process started in a running container (`podman exec`, `kubectl exec`) gets
//! Slim's variables when the container got Slim at `create`. Engines write the process file of
//! `exec --process FILE` from their own record of the container, which never saw slim-oci's
//! edit; the container's bundle (found with the runtime's `state`) has it.

use crate::args::Invocation;
use crate::bundle;
use crate::inject;
use crate::log::Log;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};

pub fn prepare(inv: &Invocation, runtime: &Path, log: &Log) {
    let (Some(file), Some(id)) = (&inv.process_file, &inv.container_id) else {
        return;
    };
    if let Err(e) = add_vars(inv, runtime, file, id) {
        log.warn(&format!(
            "exec in container {id} runs without Slim's variables: {e}"
        ));
    }
}

fn add_vars(inv: &Invocation, runtime: &Path, file: &Path, id: &str) -> Result<(), String> {
    let out = Command::new(runtime)
        .args(&inv.global_args)
        .arg("state")
        .arg(id)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("{} state: {e}", runtime.display()))?;
    if !out.status.success() {
        // Not running or not there: the runtime's exec will say so itself.
        return Ok(());
    }
    let state: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{} state printed no JSON: {e}", runtime.display()))?;
    let Some(bundle) = state.get("bundle").and_then(Value::as_str) else {
        return Err(format!("{} state names no bundle", runtime.display()));
    };
    let spec =
        bundle::read(&bundle::spec_path(Path::new(bundle), None)).map_err(|e| e.to_string())?;
    let Some(vars) = inject::injected_vars(&spec.value) else {
        return Ok(());
    };
    let mut process = bundle::read(file).map_err(|e| e.to_string())?;
    let obj = process
        .value
        .as_object_mut()
        .ok_or_else(|| format!("{} is not a JSON object", file.display()))?;
    inject::set_env(obj, &vars).map_err(|e| format!("{}: {e}", file.display()))?;
    process.write().map_err(|e| e.to_string())
}
