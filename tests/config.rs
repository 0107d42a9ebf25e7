//! Configuration layers and start-up validation: the shipped file, environment variables, flags,
//! and errors that name the bad key without revealing secrets.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use chartgate::config::{ConfigError, Settings, UpstreamMode};
use serde_json::Value;

fn shipped_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/default.toml")
}

fn toml_file(contents: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(contents.as_bytes()).unwrap();
    file
}

fn load(contents: &str) -> Result<Settings, ConfigError> {
    let file = toml_file(contents);
    Settings::load_with_env(Some(file.path()), Some(HashMap::new()), &[])
}

fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// Dotted paths of every leaf in `value`, descending into tables and into the first table of a
/// list of tables.
fn leaf_keys(value: &Value, prefix: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                leaf_keys(v, &format!("{prefix}{k}."), out);
            }
        }
        Value::Array(items) if items.first().is_some_and(Value::is_object) => {
            leaf_keys(&items[0], &format!("{prefix}[]."), out)
        }
        Value::Null => {}
        _ => out.push(prefix.trim_end_matches('.').to_string()),
    }
}

#[test]
fn the_shipped_file_holds_every_key_with_its_default() {
    let loaded = Settings::load_with_env(Some(&shipped_file()), Some(HashMap::new()), &[]).unwrap();
    assert_eq!(loaded, Settings::default());

    let file: Value = config::Config::builder()
        .add_source(config::File::from(shipped_file().as_path()))
        .build()
        .unwrap()
        .try_deserialize()
        .unwrap();
    let (mut in_file, mut known) = (Vec::new(), Vec::new());
    leaf_keys(&file, "", &mut in_file);
    leaf_keys(
        &serde_json::to_value(Settings::default()).unwrap(),
        "",
        &mut known,
    );
    in_file.sort();
    known.sort();
    assert_eq!(in_file, known);
}

#[test]
fn a_typo_names_the_key() {
    let err = load("[pool]\nmax_conections = 4\n").unwrap_err();
    assert_eq!(
        err,
        ConfigError::UnknownKey {
            key: "pool.max_conections".into()
        }
    );
    assert!(err.to_string().contains("pool.max_conections"));
    let err = load("[pol]\nmax_connections = 4\n").unwrap_err();
    assert_eq!(err, ConfigError::UnknownKey { key: "pol".into() });
    let err = load(
        "[[formulas.list]]\nid = \"x\"\nname = \"x\"\nkey = \"0123456789abcdef\"\nkee = \"1\"\n",
    )
    .unwrap_err();
    assert_eq!(
        err,
        ConfigError::UnknownKey {
            key: "formulas.list[0].kee".into()
        }
    );
}

#[test]
fn a_negative_timeout_names_the_key() {
    let err = load("[upstream]\nconnect_timeout_ms = -5\n").unwrap_err();
    let ConfigError::BadValue { key, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(key, "upstream.connect_timeout_ms");
}

#[test]
fn a_non_numeric_port_names_the_key() {
    let err = load("[server]\nbind = \"127.0.0.1:http\"\n").unwrap_err();
    let ConfigError::BadValue { key, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(key, "server.bind");
}

#[test]
fn out_of_range_values_name_the_key() {
    for (toml, key) in [
        ("[stream]\nbatch_size = 0\n", "stream.batch_size"),
        ("[pool]\nmax_connections = 0\n", "pool.max_connections"),
        ("[upstream]\nmode = \"cloud\"\n", "upstream.mode"),
        (
            "[upstream]\nurl = \"http://example.invalid/\"\n",
            "upstream.url",
        ),
        (
            "[upstream]\nsession_id = \"abc\"\n",
            "upstream.session_sign",
        ),
        (
            "[simulator]\nreject_upgrades = 200\n",
            "simulator.reject_upgrades",
        ),
        (
            "[[formulas.list]]\nid = \"x\"\nname = \"x\"\nkey = \"xyz\"\n",
            "formulas.list[0].key",
        ),
    ] {
        match load(toml) {
            Err(ConfigError::BadValue { key: got, .. }) => assert_eq!(got, key, "{toml}"),
            other => panic!("{toml}: {other:?}"),
        }
    }
}

#[test]
fn environment_variables_override_the_file_and_flags_override_both() {
    let file = toml_file("[pool]\nmax_connections = 3\n[server]\nbind = \"127.0.0.1:9000\"\n");
    let vars = env(&[
        ("CHARTGATE__POOL__MAX_CONNECTIONS", "4"),
        ("CHARTGATE__SERVER__BIND", "127.0.0.1:9001"),
        (
            "CHARTGATE__SERVER__CORS_ORIGINS",
            "http://a.example,http://b.example",
        ),
        ("CHARTGATE__UPSTREAM__MODE", "remote"),
    ]);
    let flags = [("server.bind", "127.0.0.1:9002".to_string())];
    let s = Settings::load_with_env(Some(file.path()), vars, &flags).unwrap();
    assert_eq!(s.pool.max_connections, 4);
    assert_eq!(s.server.bind.port(), 9002);
    assert_eq!(
        s.server.cors_origins,
        ["http://a.example", "http://b.example"]
    );
    assert_eq!(s.upstream.mode, UpstreamMode::Remote);
}

#[test]
fn a_bad_environment_variable_names_the_key() {
    let err = Settings::load_with_env(None, env(&[("CHARTGATE__POOL__MAX_CONECTIONS", "4")]), &[])
        .unwrap_err();
    assert_eq!(
        err,
        ConfigError::UnknownKey {
            key: "pool.max_conections".into()
        }
    );
    let err = Settings::load_with_env(None, env(&[("CHARTGATE__POOL__MAX_QUEUE", "lots")]), &[])
        .unwrap_err();
    let ConfigError::BadValue { key, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(key, "pool.max_queue");
}

#[test]
fn secrets_stay_out_of_errors_and_debug_output() {
    let err = load("[upstream]\nauth_token = 918273645\n").unwrap_err();
    assert!(err.to_string().contains("upstream.auth_token"), "{err}");
    assert!(!err.to_string().contains("918273645"), "{err}");
    let s =
        load("[upstream]\nauth_token = \"eyJ.secret.token\"\n[server]\napi_token = \"hunter2\"\n")
            .unwrap();
    assert_eq!(s.upstream.auth_token.expose(), "eyJ.secret.token");
    let debug = format!("{s:?}");
    assert!(!debug.contains("eyJ.secret.token") && !debug.contains("hunter2"));
}

#[test]
fn a_missing_explicit_file_is_an_error_naming_it() {
    let err = Settings::load_with_env(
        Some(Path::new("/nonexistent/chartgate.toml")),
        Some(HashMap::new()),
        &[],
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/chartgate.toml"),
        "{err}"
    );
}

#[test]
fn the_binary_exits_2_naming_the_bad_key() {
    let file = toml_file("[manager]\nidle_timeout_sec = 5\n");
    let out = Command::new(env!("CARGO_BIN_EXE_chartgate"))
        .args(["simulate", "--config"])
        .arg(file.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("manager.idle_timeout_sec"), "{stderr}");

    let out = Command::new(env!("CARGO_BIN_EXE_chartgate"))
        .args(["simulate", "--bogus"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bogus"));
}

#[test]
fn cluster_keys_parse_and_the_redis_password_stays_secret() {
    let s = load(
        "[cluster]\nredis_url = \"redis://:s3cretpw@127.0.0.1:6390/2\"\ninstance_id = \"a-1\"\nmax_upstream_connections = 6\n",
    )
    .unwrap();
    assert!(s.cluster.enabled());
    assert_eq!(s.cluster.instance_id, "a-1");
    assert_eq!(s.cluster.max_upstream_connections, 6);
    assert_eq!(
        s.cluster.redis_url_redacted(),
        "redis://:***@127.0.0.1:6390/2"
    );
    assert!(!format!("{s:?}").contains("s3cretpw"));
    // TLS URLs are taken; defaults mean one instance.
    assert!(load("[cluster]\nredis_url = \"rediss://:pw@cache.internal:6380\"\n").is_ok());
    assert!(!Settings::default().cluster.enabled());

    for (bad, key) in [
        (
            "[cluster]\nredis_url = \"http://:s3cretpw@host\"\n",
            "cluster.redis_url",
        ),
        (
            "[cluster]\nredis_url = \"redis://:s3cretpw@\"\n",
            "cluster.redis_url",
        ),
        ("[cluster]\nredis_url = 12\n", "cluster.redis_url"),
        ("[cluster]\ninstance_id = \"a b\"\n", "cluster.instance_id"),
        (
            "[cluster]\nmax_upstream_connections = -1\n",
            "cluster.max_upstream_connections",
        ),
        (
            "[cluster]\nlive_lease_secs = 0\n",
            "cluster.live_lease_secs",
        ),
    ] {
        let err = load(bad).unwrap_err().to_string();
        assert!(err.contains(key), "{bad}: {err}");
        assert!(!err.contains("s3cretpw"), "{bad}: {err}");
    }
    let env_set = Settings::load_with_env(
        Some(&shipped_file()),
        env(&[("CHARTGATE__CLUSTER__REDIS_URL", "redis://127.0.0.1:1")]),
        &[],
    )
    .unwrap();
    assert_eq!(env_set.cluster.redis_url.expose(), "redis://127.0.0.1:1");
}

#[test]
fn urls_are_redacted_whatever_their_password_holds() {
    use chartgate::config::redact_url_password;
    assert_eq!(redact_url_password("redis://h:1/0"), "redis://h:1/0");
    assert_eq!(redact_url_password("redis://:p@h"), "redis://:***@h");
    assert_eq!(
        redact_url_password("rediss://u:p@s:s@h"),
        "rediss://u:***@h"
    );
    assert_eq!(redact_url_password("redis://pw@h"), "redis://***@h");
    assert_eq!(redact_url_password("nonsense pw"), "<not a URL>");
}
