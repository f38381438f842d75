//! Secure mode's seccomp rule (docs/seccomp.md) merged into a spec's `linux.seccomp`:
//! `ioctl(fd, SIOCGIFCONF, ...)` fails with EPERM, every other ioctl keeps what the profile gave it.
//!
//! The request is compared on its low 32 bits only (`SCMP_CMP_MASKED_EQ` with mask 0xffffffff):
//! the kernel's `ioctl` takes the request as an `unsigned int`, so a plain `SCMP_CMP_EQ 35090`
//! would let `0x1_0000_8912` through the filter and still run SIOCGIFCONF. libseccomp has no
//! masked "not equal", so "the request is not SIOCGIFCONF" is 32 allow rules, one per bit: bit
//! `i` of the request differs from bit `i` of 0x8912. None of them overlaps the deny rule, so
//! no rule order or libseccomp conflict resolution matters.
//!
//! - The profile allowed `ioctl` unconditionally: `ioctl` leaves that rule (libseccomp lets an
//!   unconditional rule override conditional ones) and the 32 allow rules plus the deny rule
//!   take its place.
//! - The profile did not: only the deny rule is added (the profile keeps refusing what it refused).
//! - No profile (a privileged container): a profile that allows everything but that ioctl.
//!
//! A rule whose action equals the profile's default action is not added: libseccomp refuses
//! those (`EACCES`), and it would change nothing.

use serde_json::{json, Map, Value};

/// `SIOCGIFCONF`, <linux/sockios.h>.
pub const SIOCGIFCONF: u64 = 0x8912;
const LOW32: u64 = 0xffff_ffff;
const EPERM: u64 = 1;

/// The architectures a new profile covers: the native one and the ones the same kernel runs
/// (a filter without them would kill 32-bit programs, libseccomp's default for a foreign
/// architecture).
#[cfg(target_arch = "x86_64")]
const ARCHITECTURES: &[&str] = &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"];
#[cfg(target_arch = "aarch64")]
const ARCHITECTURES: &[&str] = &["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const ARCHITECTURES: &[&str] = &[];

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("linux.seccomp in the spec is not an OCI seccomp object: {0}")]
pub struct SeccompError(String);

/// `ioctl` with `request & 0xffffffff == SIOCGIFCONF` fails with EPERM.
pub fn deny_rule() -> Value {
    json!({
        "names": ["ioctl"],
        "action": "SCMP_ACT_ERRNO",
        "errnoRet": EPERM,
        "args": [{ "index": 1, "value": LOW32, "valueTwo": SIOCGIFCONF, "op": "SCMP_CMP_MASKED_EQ" }]
    })
}

/// `ioctl` allowed when bit `bit` of the request differs from that bit of SIOCGIFCONF.
fn allow_rule(bit: u32) -> Value {
    let mask = 1u64 << bit;
    json!({
        "names": ["ioctl"],
        "action": "SCMP_ACT_ALLOW",
        "args": [{ "index": 1, "value": mask, "valueTwo": !SIOCGIFCONF & mask, "op": "SCMP_CMP_MASKED_EQ" }]
    })
}

/// The 32 rules that together allow every ioctl request but SIOCGIFCONF.
pub fn allow_rules() -> Vec<Value> {
    (0..32).map(allow_rule).collect()
}

/// The profile of a container that had none.
fn allow_all_but_siocgifconf() -> Value {
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ARCHITECTURES,
        "syscalls": [deny_rule()]
    })
}

/// Merges the rule into `linux` (the spec's `linux` object). Idempotent.
pub fn merge(linux: &mut Map<String, Value>) -> Result<(), SeccompError> {
    let seccomp = match linux.get_mut("seccomp") {
        None | Some(Value::Null) => {
            linux.insert("seccomp".into(), allow_all_but_siocgifconf());
            return Ok(());
        }
        Some(Value::Object(s)) => s,
        Some(other) => return Err(SeccompError(format!("{other}"))),
    };
    let default = action_of(seccomp, "defaultAction", "defaultErrnoRet")
        .ok_or_else(|| SeccompError("no defaultAction".into()))?;
    let syscalls = match seccomp
        .entry("syscalls")
        .or_insert_with(|| Value::Array(vec![]))
    {
        v @ Value::Null => {
            *v = Value::Array(vec![]);
            v.as_array_mut().expect("just set")
        }
        Value::Array(a) => a,
        other => return Err(SeccompError(format!("syscalls is {other}"))),
    };
    let mut removed = false;
    for rule in syscalls.iter_mut() {
        let Some(rule) = rule.as_object_mut() else {
            return Err(SeccompError(format!("a syscall rule is {rule}")));
        };
        let unconditional = match rule.get("args") {
            None | Some(Value::Null) => true,
            Some(Value::Array(a)) => a.is_empty(),
            Some(_) => false,
        };
        if !unconditional || rule.get("action") != Some(&json!("SCMP_ACT_ALLOW")) {
            continue;
        }
        if let Some(Value::Array(names)) = rule.get_mut("names") {
            let before = names.len();
            names.retain(|n| n != "ioctl");
            removed |= names.len() != before;
        }
    }
    // A rule left without names would make the runtime fail.
    syscalls.retain(|r| r.get("names") != Some(&json!([])));
    let mut wanted = Vec::new();
    if removed && default != ("SCMP_ACT_ALLOW".to_string(), None) {
        wanted.extend(allow_rules());
    }
    if default != ("SCMP_ACT_ERRNO".to_string(), Some(EPERM)) {
        wanted.push(deny_rule());
    }
    for rule in wanted {
        if !syscalls.contains(&rule) {
            syscalls.push(rule);
        }
    }
    Ok(())
}

/// An action and, for SCMP_ACT_ERRNO, its errno (EPERM unless given).
fn action_of(obj: &Map<String, Value>, action: &str, errno: &str) -> Option<(String, Option<u64>)> {
    let a = obj.get(action)?.as_str()?.to_string();
    let e =
        (a == "SCMP_ACT_ERRNO").then(|| obj.get(errno).and_then(Value::as_u64).unwrap_or(EPERM));
    Some((a, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linux_of(fixture: &str) -> Map<String, Value> {
        let spec: Value = serde_json::from_str(fixture).unwrap();
        spec["linux"].as_object().unwrap().clone()
    }

    fn ioctl_rules(linux: &Map<String, Value>) -> Vec<Value> {
        linux["seccomp"]["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["names"].as_array().unwrap().contains(&json!("ioctl")))
            .cloned()
            .collect()
    }

    /// Evaluates the profile's ioctl rules for a request the way libseccomp's filter does when
    /// no two rules of different actions overlap (which `merge` guarantees).
    fn verdict(linux: &Map<String, Value>, request: u64) -> String {
        let s = &linux["seccomp"];
        for r in ioctl_rules(linux) {
            let args = r
                .get("args")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let hit = args.iter().all(|a| {
                assert_eq!(a["index"], 1);
                let (v, v2) = (
                    a["value"].as_u64().unwrap(),
                    a["valueTwo"].as_u64().unwrap_or(0),
                );
                match a["op"].as_str().unwrap() {
                    "SCMP_CMP_MASKED_EQ" => request & v == v2,
                    op => panic!("unexpected op {op}"),
                }
            });
            if hit {
                return r["action"].as_str().unwrap().to_string();
            }
        }
        s["defaultAction"].as_str().unwrap().to_string()
    }

    #[test]
    fn podman_profile_gets_rule_and_keeps_other_ioctls() {
        let mut linux = linux_of(include_str!("../fixtures/podman-4.3.json"));
        let before = ioctl_rules(&linux);
        assert_eq!(before.len(), 1, "the fixture allows ioctl in its big list");
        assert_eq!(before[0]["action"], "SCMP_ACT_ALLOW");
        let big = linux["seccomp"]["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .position(|r| r == &before[0])
            .unwrap();
        let names_before = before[0]["names"].as_array().unwrap().len();
        merge(&mut linux).unwrap();
        let rules = ioctl_rules(&linux);
        assert_eq!(rules.len(), 33);
        assert!(rules
            .iter()
            .all(|r| !r["args"].as_array().unwrap().is_empty()));
        assert_eq!(
            linux["seccomp"]["syscalls"][big]["names"]
                .as_array()
                .unwrap()
                .len(),
            names_before - 1
        );
        assert_eq!(verdict(&linux, SIOCGIFCONF), "SCMP_ACT_ERRNO");
        assert_eq!(verdict(&linux, (1 << 32) | SIOCGIFCONF), "SCMP_ACT_ERRNO");
        for other in [
            0x8933u64, /* SIOCGIFINDEX */
            0x541b,    /* FIONREAD */
            0x8913, 0, LOW32,
        ] {
            assert_eq!(
                verdict(&linux, other),
                "SCMP_ACT_ALLOW",
                "request {other:#x}"
            );
        }
        let once = linux.clone();
        merge(&mut linux).unwrap();
        assert_eq!(linux, once, "merge is idempotent");
    }

    #[test]
    fn no_profile_gets_allow_all_but_siocgifconf() {
        let mut linux = linux_of(include_str!("../fixtures/podman-4.3-privileged.json"));
        assert!(linux.get("seccomp").is_none());
        merge(&mut linux).unwrap();
        assert_eq!(linux["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
        assert_eq!(linux["seccomp"]["syscalls"], json!([deny_rule()]));
        assert!(!linux["seccomp"]["architectures"]
            .as_array()
            .unwrap()
            .is_empty());
        assert_eq!(verdict(&linux, SIOCGIFCONF), "SCMP_ACT_ERRNO");
        assert_eq!(verdict(&linux, 0x8933), "SCMP_ACT_ALLOW");
        let once = linux.clone();
        merge(&mut linux).unwrap();
        assert_eq!(linux, once);
    }

    #[test]
    fn profile_without_ioctl_keeps_refusing_it() {
        let mut linux = Map::new();
        linux.insert(
            "seccomp".into(),
            json!({"defaultAction": "SCMP_ACT_KILL", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}),
        );
        merge(&mut linux).unwrap();
        assert_eq!(ioctl_rules(&linux), vec![deny_rule()]);
        assert_eq!(verdict(&linux, 0x8933), "SCMP_ACT_KILL");
    }

    #[test]
    fn rules_equal_to_the_default_are_not_added() {
        // Default EPERM: SIOCGIFCONF falls to the default once ioctl leaves the allow list.
        let mut linux = Map::new();
        linux.insert(
            "seccomp".into(),
            json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["ioctl"], "action": "SCMP_ACT_ALLOW"}]}),
        );
        merge(&mut linux).unwrap();
        assert_eq!(ioctl_rules(&linux), allow_rules());
        assert_eq!(verdict(&linux, SIOCGIFCONF), "SCMP_ACT_ERRNO");
        // Default allow: only the deny rule.
        let mut linux = Map::new();
        linux.insert(
            "seccomp".into(),
            json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": null}),
        );
        merge(&mut linux).unwrap();
        assert_eq!(ioctl_rules(&linux), vec![deny_rule()]);
    }

    #[test]
    fn malformed_profile_is_an_error() {
        let mut linux = Map::new();
        linux.insert("seccomp".into(), json!("unconfined"));
        assert!(merge(&mut linux).is_err());
        let mut linux = Map::new();
        linux.insert("seccomp".into(), json!({"syscalls": []}));
        assert!(merge(&mut linux).is_err());
    }
}
