//! Cameras: the fake GigE Vision camera through aravis, and a USB source without a device.

use std::process::Stdio;

use crate::util::*;

#[test]
fn gige_fake_camera_answers_software_triggers_one_for_one() {
    let dir = temp_dir("gige");
    let commands = format!(
        r#"{bin} doctor > {d}/doctor.txt 2>&1
printf 'g1\n{{"id": "g2"}}\ng3\ng4\n' | {bin} run --provider cpu --model {m} --calibration {c} --source gige:first --gige-stream {first_stream} > {d}/answers.txt 2> {d}/run.err
printf 'p1\np2\n' | {bin} run --provider cpu --model {m} --calibration {c} --source gige:first --gige-pixel-format BayerRG8 --gige-stream socket > {d}/bayer.txt 2> {d}/bayer.err"#,
        d = dir.display(),
        bin = efficientad_shell(),
        // Natively (as root) the first run receives through aravis's packet socket and the
        // second through a UDP socket; qemu cannot emulate the packet socket's ring buffer.
        first_stream = if runner().is_some() { "socket" } else { "auto" },
        m = small_bundle().display(),
        c = small_calibration().display(),
    );
    let output = with_fake_gige_camera(&dir, &commands);
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    assert!(
        output.status.success(),
        "script failed: {}\ndoctor: {}\nrun: {}\ncamera: {}",
        text(&output.stderr),
        read("doctor.txt"),
        read("run.err"),
        read("camera.log")
    );
    let doctor = read("doctor.txt");
    assert!(
        doctor.contains("gige:") && doctor.contains("Fake"),
        "discovery: {doctor}"
    );
    let answers = json_lines(read("answers.txt").as_bytes());
    let ids: Vec<&str> = answers
        .iter()
        .map(|a| a["id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(ids, ["g1", "g2", "g3", "g4"], "{}", read("run.err"));
    let mut indices = Vec::new();
    for a in &answers {
        assert!(
            a["verdict"] == "OK" || a["verdict"] == "NG",
            "{a}\n{}",
            read("run.err")
        );
        // The fake camera's default frame: 512x512.
        assert_eq!(
            (a["frame"]["width"].as_u64(), a["frame"]["height"].as_u64()),
            (Some(512), Some(512)),
            "{a}"
        );
        assert!(
            a["frame"]["source"]
                .as_str()
                .is_some_and(|s| s.starts_with("gige:")),
            "{a}"
        );
        indices.push(a["frame"]["index"].as_u64().expect("index"));
    }
    assert_eq!(
        indices,
        [1, 2, 3, 4],
        "one software-triggered frame per trigger"
    );
    let bayer = json_lines(read("bayer.txt").as_bytes());
    assert_eq!(bayer.len(), 2, "{}", read("bayer.err"));
    assert!(
        bayer.iter().all(|a| a["verdict"] != "ERROR"),
        "{bayer:?}\n{}",
        read("bayer.err")
    );
}

#[test]
fn usb_without_a_camera_fails_at_start_naming_v4l2() {
    let output = run(efficientad()
        .args(["run", "--provider", "cpu", "--source", "usb:0", "--model"])
        .arg(small_bundle())
        .arg("--calibration")
        .arg(small_calibration())
        .stdin(Stdio::null()));
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no V4L2 device found"), "{stderr}");
}
