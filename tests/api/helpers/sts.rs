//! moto's STS server, the AWS emulator the IAM tests verify tokens against,
//! and the tokens a function would make for it (`iam_tokens.py`: AssumeRole,
//! then the Python client's token builder).

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{OwnedProcess, client, eventually, free_port};

pub struct StsEmulator {
    pub url: String,
    _process: OwnedProcess,
}

impl StsEmulator {
    /// `moto_server` on a free loopback port (installed by `make test`).
    pub async fn start() -> Self {
        let port = free_port();
        let process = OwnedProcess::spawn(
            Command::new("moto_server")
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let url = format!("http://127.0.0.1:{port}/");
        let client = client();
        let up = eventually(Duration::from_secs(30), async || {
            client.get(format!("{url}moto-api/")).send().await.is_ok()
        })
        .await;
        assert!(up, "moto_server did not start (pip install 'moto[server]')");
        Self {
            url,
            _process: process,
        }
    }

    /// Tokens by name (see `iam_tokens.py`), signed for `audience`;
    /// `other_url` is a second endpoint some tokens name.
    pub fn tokens(&self, audience: &str, other_url: &str) -> HashMap<String, String> {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/api/helpers/iam_tokens.py"
        );
        let out = Command::new("python3")
            .args([script, &self.url, audience, other_url])
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "iam_tokens.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("tokens as JSON")
    }
}
