//! HTTPS on the public listener (issue 25, item 2; `TLS_CERT_FILE`,
//! `TLS_KEY_FILE`): certificates made by the test's own CA, mounted the way
//! Kubernetes mounts a Secret, renewed and broken while the service runs.

use std::collections::HashMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{
    IssuedPair, MountedSecret, ServiceProcess, TEST_KEY, TestCa, base_env, create_database,
    eventually, failed_start, metrics_text, mysql_admin_url, random_suffix, redis_url,
};

/// The service's environment, serving HTTPS with `secret`'s files.
async fn https_env(secret: &MountedSecret) -> HashMap<String, String> {
    let (_db, url) = create_database(&mysql_admin_url()).await;
    let mut env = base_env(&url, &redis_url(), &format!("mwtest:{}:", random_suffix()));
    env.insert(
        "TLS_CERT_FILE".into(),
        secret.cert_file().display().to_string(),
    );
    env.insert(
        "TLS_KEY_FILE".into(),
        secret.key_file().display().to_string(),
    );
    env
}

/// The certificate a new connection is served (DER).
async fn served_certificate(ca: &TestCa, port: u16) -> Vec<u8> {
    let stream = ca
        .connect(port, rustls::ALL_VERSIONS, &[b"http/1.1"])
        .await
        .expect("TLS handshake");
    let (_, session) = stream.get_ref();
    session.peer_certificates().expect("a certificate")[0].to_vec()
}

/// One keep-alive GET /healthz on an open connection; its status line.
async fn healthz_on<S: AsyncReadExt + AsyncWriteExt + Unpin>(stream: &mut S) -> String {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    // The body is {"status":"ok"}: read until it has arrived.
    while !answer.ends_with(b"}") {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the connection closed");
        answer.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    text.lines().next().unwrap_or_default().to_owned()
}

fn reloads(scrape: &str, outcome: &str) -> u64 {
    let series = format!("middleway_tls_certificate_reloads_total{{outcome=\"{outcome}\"}} ");
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn https_with_h2_and_http1_tls_1_2_and_1_3_and_plain_http_is_refused() {
    let ca = TestCa::new();
    let pair = ca.issue_valid();
    let secret = MountedSecret::new(&pair);
    let env = https_env(&secret).await;
    let service = ServiceProcess::start_https(env, &ca).await;
    let admin = service.admin.clone();

    let port = service.port();

    // The API works over it (HTTP/1.1 here).
    let acquire = r#"{"op":"acquire","name":"over-tls"}"#;
    let (status, body) = ca
        .https_request(
            port,
            &format!("POST /locks HTTP/1.1\r\nAuthorization: Bearer {TEST_KEY}\r\nContent-Type: application/json"),
            acquire,
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"fence\""), "{body}");
    let (status, _) = ca
        .https_request(
            port,
            &format!("GET /transcriptions/1 HTTP/1.1\r\nAuthorization: Bearer {TEST_KEY}"),
            "",
        )
        .await
        .unwrap();
    assert_eq!(status, 404, "a real answer, over HTTPS");

    // ALPN picks h2 when offered, HTTP/1.1 when only that is.
    for (offered, chosen) in [
        (&[b"h2".as_slice(), b"http/1.1"][..], b"h2".as_slice()),
        (&[b"http/1.1".as_slice()][..], b"http/1.1".as_slice()),
    ] {
        let stream = ca
            .connect(port, rustls::ALL_VERSIONS, offered)
            .await
            .unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(chosen));
    }
    // An h2 connection serves: the client preface and SETTINGS are answered
    // with the server's SETTINGS frame (type 4).
    let mut h2 = ca
        .connect(port, rustls::ALL_VERSIONS, &[b"h2"])
        .await
        .unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut frame = [0u8; 9];
    h2.read_exact(&mut frame).await.unwrap();
    assert_eq!(frame[3], 4, "a SETTINGS frame: {frame:?}");

    // TLS 1.2 and 1.3 each shake hands.
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut stream = ca.connect(port, &[version], &[b"http/1.1"]).await.unwrap();
        assert_eq!(stream.get_ref().1.protocol_version(), Some(version.version));
        assert_eq!(healthz_on(&mut stream).await, "HTTP/1.1 200 OK");
    }

    // Plain HTTP to the TLS port gets no HTTP answer.
    let mut plain = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut answer)).await;
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP was answered: {}",
        String::from_utf8_lossy(&answer)
    );
    let refused = reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await;
    assert!(refused.is_err(), "a plain HTTP client gets no response");

    // The admin listener stays plain (cluster-internal) and reports the expiry.
    let scrape = metrics_text(&admin).await;
    let expiry: i64 = scrape
        .lines()
        .find_map(|l| l.strip_prefix("middleway_tls_certificate_expiry_timestamp_seconds "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let in_a_day = time::OffsetDateTime::now_utc().unix_timestamp() + 86_400;
    assert!((in_a_day - expiry).abs() < 120, "expiry {expiry}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_renewed_certificate_is_served_within_seconds_open_connections_carry_on_and_broken_pairs_are_refused()
 {
    let ca = TestCa::new();
    let first = ca.issue_valid();
    let mut secret = MountedSecret::new(&first);
    let env = https_env(&secret).await;
    let service = ServiceProcess::start_https(env, &ca).await;
    let admin = service.admin.clone();
    let port = service.port();
    assert_eq!(served_certificate(&ca, port).await, first.der);
    let mut open = ca
        .connect(port, rustls::ALL_VERSIONS, &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(healthz_on(&mut open).await, "HTTP/1.1 200 OK");

    // Renewal as the kubelet does it: a new folder, `..data` swapped.
    let renewed = ca.issue_valid();
    secret.update(&renewed);
    let served = eventually(Duration::from_secs(5), async || {
        served_certificate(&ca, port).await == renewed.der
    })
    .await;
    assert!(
        served,
        "the renewed certificate is served to new connections"
    );
    assert_eq!(
        healthz_on(&mut open).await,
        "HTTP/1.1 200 OK",
        "a connection made before the renewal carries on"
    );
    assert_eq!(reloads(&metrics_text(&admin).await, "loaded"), 1);

    // Broken pairs written in place (cert-manager style): refused, the last
    // good one stays. A key that is not the certificate's, then an expired
    // certificate, then one not valid yet.
    let other = ca.issue_valid();
    let broken = [
        IssuedPair {
            key_pem: other.key_pem.clone(),
            ..renewed.clone()
        },
        ca.issue(-7200, -3600),
        ca.issue(3600, 7200),
    ];
    for (refused, pair) in broken.iter().enumerate() {
        secret.update(pair);
        let counted = eventually(Duration::from_secs(5), async || {
            reloads(&metrics_text(&admin).await, "refused") == refused as u64 + 1
        })
        .await;
        assert!(counted, "broken pair {refused} is refused and counted");
        assert_eq!(served_certificate(&ca, port).await, renewed.der);
    }
    let logs = service.logs();
    assert!(
        logs.contains("the new TLS certificate pair was refused"),
        "{logs}"
    );
    assert!(!logs.contains("PRIVATE KEY"), "no key material in the logs");

    // Written in place one file after the other, as a tool outside
    // Kubernetes does: a look between the two writes sees a certificate
    // without its key, which must not count as a refused pair.
    let refused_before = reloads(&metrics_text(&admin).await, "refused");
    for _ in 0..3 {
        let next = ca.issue_valid();
        // The files are read once a second, and the last look just loaded
        // the previous pair: 0.7 s on, the next look falls between the writes.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let (cert, key) = (
            secret.dir.join("..data/tls.crt"),
            secret.dir.join("..data/tls.key"),
        );
        std::fs::write(&cert, &next.cert_pem).unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        std::fs::write(&key, &next.key_pem).unwrap();
        let served = eventually(Duration::from_secs(5), async || {
            served_certificate(&ca, port).await == next.der
        })
        .await;
        assert!(served, "a pair written in place is served once whole");
    }
    assert_eq!(
        reloads(&metrics_text(&admin).await, "refused"),
        refused_before,
        "a pair caught half written is not a refusal"
    );

    // Fixed: served again.
    let fixed = ca.issue_valid();
    secret.update(&fixed);
    let served = eventually(Duration::from_secs(5), async || {
        served_certificate(&ca, port).await == fixed.der
    })
    .await;
    assert!(served, "a good pair after broken ones is served");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unusable_pair_at_startup_is_exit_2_naming_the_variable() {
    let ca = TestCa::new();
    let good = ca.issue_valid();
    let secret = MountedSecret::new(&good);
    let env = https_env(&secret).await;
    let start = |change: &dyn Fn(&mut HashMap<String, String>)| {
        let mut env = env.clone();
        change(&mut env);
        failed_start(&env)
    };
    let expect = |(code, stderr): (Option<i32>, String), variable: &str, why: &str| {
        assert_eq!(code, Some(2), "{stderr}");
        let line = stderr.trim();
        assert!(!line.contains('\n'), "one line: {stderr}");
        assert!(
            line.starts_with(&format!("middleway: configuration error: {variable}: ")),
            "names {variable}: {stderr}"
        );
        assert!(line.contains(why), "says {why:?}: {stderr}");
    };

    expect(
        start(&|env| {
            env.insert("TLS_CERT_FILE".into(), "/nonexistent/tls.crt".into());
        }),
        "TLS_CERT_FILE",
        "cannot read the file",
    );
    expect(
        start(&|env| {
            env.remove("TLS_KEY_FILE");
        }),
        "TLS_KEY_FILE",
        "is required",
    );
    let write = |name: &str, text: &str| {
        let path = secret.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let expired = ca.issue(-7200, -3600);
    let (cert, key) = (
        write("expired.crt", &expired.cert_pem),
        write("expired.key", &expired.key_pem),
    );
    expect(
        start(&|env| {
            env.insert("TLS_CERT_FILE".into(), cert.clone());
            env.insert("TLS_KEY_FILE".into(), key.clone());
        }),
        "TLS_CERT_FILE",
        "expired",
    );
    let other_key = write("other.key", &ca.issue_valid().key_pem);
    expect(
        start(&|env| {
            env.insert("TLS_KEY_FILE".into(), other_key.clone());
        }),
        "TLS_KEY_FILE",
        "does not fit the certificate",
    );
    let garbage = write("garbage.crt", "not a certificate");
    expect(
        start(&|env| {
            env.insert("TLS_CERT_FILE".into(), garbage.clone());
        }),
        "TLS_CERT_FILE",
        "no certificate",
    );
}
