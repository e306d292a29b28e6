//! Container targets found by themselves: a real Docker daemon in a container-host
//! namespace, labelled containers discovered and balanced over.

use std::time::Duration;

use xlb_tests::{
    docker::{DockerHost, WEB_IMAGE},
    netns::Netns,
};

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_docker_host_runs_the_test_image_on_dynamic_host_ports() {
    xlb_tests::netns::require_root();
    let ns = Netns::new("dock");
    let docker = DockerHost::start(&ns);
    docker.import_web_image();
    let id = docker.docker(&[
        "run",
        "-d",
        "--init",
        "-p",
        "0:80",
        "--hostname",
        "task-1",
        WEB_IMAGE,
    ]);
    let port = docker.docker(&["port", id.trim(), "80/tcp"]);
    let port: u16 = port
        .lines()
        .next()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(port >= 32768, "{port}");
    std::thread::sleep(Duration::from_millis(500));
    let body = ns.exec(
        "busybox",
        &["wget", "-qO-", &format!("http://198.18.100.1:{port}/")],
    );
    assert_eq!(body.trim(), "task-1");
}
