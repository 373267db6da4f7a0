//! The `hf` feature's error paths, against a local stand-in for the hub
//! (this machine reaches no model hub). Alone in its binary because it sets
//! environment variables.
#![cfg(feature = "hf")]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;

use tokenfab_models::{ModelSpec, ModelsError};

/// Answers every request with 404, as the hub does for a missing file.
fn not_found_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    format!("http://{addr}")
}

#[test]
fn hub_errors_say_what_to_do() {
    let hub_cache = tempfile::tempdir().unwrap();
    // SAFETY: the only test in this binary; the server thread reads no env.
    unsafe {
        std::env::set_var("HF_HUB_CACHE", hub_cache.path());
        std::env::remove_var("HF_TOKEN");
    }
    let spec: ModelSpec = "hf:tokenfab-test/none/model.gguf".parse().unwrap();

    unsafe { std::env::set_var("HF_ENDPOINT", not_found_server()) };
    let err = spec.resolve(Path::new("/unused"), false).unwrap_err();
    assert!(matches!(err, ModelsError::Hf { .. }), "{err}");
    assert!(err.to_string().contains("HTTP 404"), "{err}");

    // Nothing listens on port 1: a network failure.
    unsafe { std::env::set_var("HF_ENDPOINT", "http://127.0.0.1:1") };
    let err = spec.resolve(Path::new("/unused"), false).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ModelsError::HfUnreachable { .. }), "{msg}");
    assert!(msg.contains("unreachable from this machine"), "{msg}");
    assert!(msg.contains("--model /path/to/file.gguf"), "{msg}");
}
