//! The same maps on every architecture, and the README's systemd units.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use efficientad::model::bundle::Bundle;
use serde_json::Value;

use crate::util::*;

/// The runtime's maps of the small model, on every architecture, equal the ones x86-64 ONNX
/// Runtime computed through Python (tests/fixtures/make_arch_reference.py) to 1e-5 of each
/// map's largest value.
#[test]
fn maps_equal_the_x86_reference_within_1e5_on_this_architecture() {
    let fixture = root().join("tests/fixtures/arch");
    let meta: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture.join("maps.json")).expect("tests/fixtures/arch/maps.json"),
    )
    .expect("maps.json");
    let bundle = Bundle::open(small_bundle()).expect("bundle");
    assert_eq!(
        bundle.info.model_sha256,
        meta["model_sha256"].as_str().expect("model_sha256"),
        "the tests' small model is not the one the reference was made from (did the exporter \
         change?): remake it with tests/fixtures/make_arch_reference.py"
    );
    let bytes = std::fs::read(fixture.join("maps.f32")).expect("maps.f32");
    let reference: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let images: Vec<PathBuf> = meta["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|n| fixture.join(n.as_str().expect("name")))
        .collect();
    let cells = 56 * 56;
    assert_eq!(reference.len(), images.len() * 2 * cells, "maps.f32 size");

    let maps = reference_raw_maps(small_bundle(), &images);
    let arch = std::env::consts::ARCH;
    let mut worst = 0.0f64;
    for (i, (st, ae)) in maps.iter().enumerate() {
        for (m, (ours, name)) in [(st, "map_st"), (ae, "map_ae")].into_iter().enumerate() {
            let want = &reference[(2 * i + m) * cells..(2 * i + m + 1) * cells];
            assert_eq!(ours.len(), cells, "{name} size");
            let scale = want.iter().fold(0f64, |a, &v| a.max(f64::from(v).abs()));
            assert!(scale > 0.0, "{name} of {} is all zero", images[i].display());
            let diff = ours.iter().zip(want).fold(0f64, |a, (&x, &y)| {
                a.max((f64::from(x) - f64::from(y)).abs())
            });
            worst = worst.max(diff / scale);
            assert!(
                diff <= 1e-5 * scale,
                "{name} of {} on {arch}: max difference {diff:e} from x86-64 ONNX Runtime, \
                 more than 1e-5 of its largest value {scale:e}",
                images[i].display()
            );
        }
    }
    eprintln!("{arch}: maps equal the x86-64 reference to {worst:.2e} of their largest values");
}

/// The systemd units of the README: `systemd-analyze verify` accepts them without a warning,
/// and the socket-activated one really carries the trigger protocol over TCP — systemd's own
/// `systemd-socket-activate --accept --inetd` hands each connection to `efficientad run` as its
/// stdin and stdout, as `StandardInput=socket` / `StandardOutput=socket` do.
#[test]
fn readme_systemd_units_verify_and_socket_activation_carries_the_protocol() {
    for tool in ["systemd-analyze", "systemd-socket-activate"] {
        assert!(
            have(tool),
            "{tool} is missing: install systemd (.ci/run does)"
        );
    }
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let dir = temp_dir("units");
    let mut units = Vec::new();
    for block in readme.split("```ini\n").skip(1) {
        let block = block.split("```").next().unwrap_or_default();
        let Some(name) = block
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# /etc/systemd/system/"))
        else {
            continue;
        };
        // The README's install path, here the binary under test (verify checks it exists).
        let text = block.replace(
            "/usr/local/bin/efficientad",
            env!("CARGO_BIN_EXE_efficientad"),
        );
        std::fs::write(dir.join(name.trim()), text).expect("write unit");
        units.push(dir.join(name.trim()));
    }
    let names: Vec<String> = units
        .iter()
        .filter_map(|u| u.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    for want in [
        "efficientad.socket",
        "efficientad@.service",
        "efficientad-bridge.service",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "README lacks {want}: {names:?}"
        );
    }
    let output = run(Command::new("systemd-analyze").arg("verify").args(&units));
    let stderr = text(&output.stderr);
    assert!(
        output.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );

    // The protocol through a socket-activated connection.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let source = replay_folder("socket-activated");
    let mut activate = Command::new("systemd-socket-activate");
    activate.args(["--accept", "--inetd", "-l", &format!("127.0.0.1:{port}")]);
    // Like systemd, it starts the program with an empty environment but for what it is told
    // to pass (the unit's Environment= lines on a real box).
    for var in [
        "PATH",
        "HOME",
        "ORT_DYLIB_PATH",
        "QEMU_LD_PREFIX",
        "EFFICIENTAD_CACHE",
        "EFFICIENTAD_PYTHON",
    ] {
        if std::env::var_os(var).is_some() {
            activate.arg(format!("--setenv={var}"));
        }
    }
    activate
        .arg("--")
        .args(efficientad_argv())
        .args(run_args(&source))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut listener = activate.spawn().expect("systemd-socket-activate");
    let started = std::time::Instant::now();
    let mut conn = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(c) => break c,
            Err(e) if started.elapsed() < std::time::Duration::from_secs(20) => {
                let _ = e;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => panic!("no listener on port {port}: {e}"),
        }
    };
    conn.set_read_timeout(Some(std::time::Duration::from_secs(120)))
        .expect("timeout");
    conn.write_all(b"s1\n{\"id\": \"s2\"}\n\n")
        .expect("send triggers");
    // End of input: the runtime answers what is pending and exits, closing the connection.
    conn.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut answers = String::new();
    let read = std::io::Read::read_to_string(&mut conn, &mut answers);
    let _ = listener.kill();
    let log = listener
        .wait_with_output()
        .map(|o| text(&o.stderr))
        .unwrap_or_default();
    read.unwrap_or_else(|e| panic!("reading answers: {e}\n{log}"));
    let lines = json_lines(answers.as_bytes());
    let ids: Vec<Value> = lines.iter().map(|l| l["id"].clone()).collect();
    assert_eq!(
        ids,
        [Value::from("s1"), Value::from("s2"), Value::Null],
        "{answers}\n{log}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l["verdict"] == "OK" || l["verdict"] == "NG"),
        "{answers}\n{log}"
    );
}
