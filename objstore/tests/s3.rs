//! The S3 side of `Location` against a real S3-compatible server: moto's server mode (PyPI `moto`,
//! installed by `deploy/test.sh`), started here on a free port.

use bytes::Bytes;
use objstore::Location;

struct Moto(std::process::Child, u16);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_moto() -> Moto {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("moto_server (pip install 'moto[server]'; deploy/test.sh installs it)");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "moto_server did not listen on {port}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Moto(child, port)
}

#[tokio::test]
async fn s3_staged_objects_appear_only_when_published() {
    let moto = start_moto();
    let endpoint = format!("http://127.0.0.1:{}", moto.1);
    let options = [
        ("endpoint", endpoint.as_str()),
        ("allow_http", "true"),
        ("region", "us-east-1"),
        ("access_key_id", "test"),
        ("secret_access_key", "test"),
    ];
    let client = reqwest_put(moto.1, "/bucket1").await;
    assert!(client, "bucket created");
    let loc = Location::parse_with("s3://bucket1/qoeflow", &options).unwrap();
    assert_eq!(loc.url(), "s3://bucket1/qoeflow");
    let staged = loc
        .stage("t/dt=1/part-x.parquet", Bytes::from_static(b"one"))
        .await
        .unwrap();
    assert!(staged.upload.is_some());
    assert_eq!(
        loc.list("").await.unwrap(),
        vec![],
        "a staged object is invisible"
    );
    assert_eq!(loc.get("t/dt=1/part-x.parquet").await.unwrap(), None);
    loc.publish(&staged).await.unwrap();
    loc.publish(&staged).await.unwrap();
    assert_eq!(
        loc.get("t/dt=1/part-x.parquet").await.unwrap().as_deref(),
        Some(&b"one"[..])
    );
    let listed = loc.list("t").await.unwrap();
    assert_eq!(
        listed,
        vec![objstore::Entry {
            key: "t/dt=1/part-x.parquet".into(),
            size: 3
        }]
    );

    assert!(
        loc.put_if_absent("c/e1", Bytes::from_static(b"1"))
            .await
            .unwrap()
    );
    assert!(
        !loc.put_if_absent("c/e1", Bytes::from_static(b"2"))
            .await
            .unwrap(),
        "If-None-Match: * refuses a second create"
    );
    assert_eq!(loc.get("c/e1").await.unwrap().as_deref(), Some(&b"1"[..]));
    loc.put("c/e1", Bytes::from_static(b"3")).await.unwrap();
    assert_eq!(loc.get("c/e1").await.unwrap().as_deref(), Some(&b"3"[..]));
    loc.delete("c/e1").await.unwrap();
    loc.delete("c/e1").await.unwrap();
    assert_eq!(loc.list("c").await.unwrap(), vec![]);
}

/// Creates a bucket with a plain PUT (moto does not check signatures).
async fn reqwest_put(port: u16, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(format!("PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.starts_with("HTTP/1.1 200")
}
