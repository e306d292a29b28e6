use super::*;

fn vips() -> BTreeSet<VipId> {
    ["203.0.113.10:80/tcp", "203.0.113.10:53/udp"]
        .iter()
        .map(|v| v.parse().unwrap())
        .collect()
}

const HOST: &str = "198.51.100.20";

/// A container as `docker inspect` reports it, with `labels`, `exposed` ports, `ports`
/// bindings, networks and health status.
fn container(
    labels: &str,
    exposed: &str,
    ports: &str,
    networks: &str,
    health: Option<&str>,
) -> ContainerInspectResponse {
    let health = health.map_or(String::new(), |h| {
        format!(",\"Health\":{{\"Status\":\"{h}\"}}")
    });
    let json = format!(
        "{{\"Id\":\"0123456789abcdef0123\",\"Name\":\"/web-1\",\
          \"State\":{{\"Running\":true{health}}},\
          \"Config\":{{\"Labels\":{{{labels}}},\"ExposedPorts\":{{{exposed}}}}},\
          \"NetworkSettings\":{{\"Ports\":{{{ports}}},\"Networks\":{{{networks}}}}}}}"
    );
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"))
}

fn host() -> IpAddr {
    HOST.parse().unwrap()
}

#[test]
fn a_published_port_is_reached_at_the_host() {
    let c = container(
        "\"xlb.vip\":\"203.0.113.10:80/tcp\",\"xlb.weight\":\"50\"",
        "\"80/tcp\":{}",
        "\"80/tcp\":[{\"HostIp\":\"0.0.0.0\",\"HostPort\":\"32769\"}]",
        "\"bridge\":{\"IPAddress\":\"172.17.0.3\"}",
        None,
    );
    let f = target_of(&c, host(), &vips(), None).unwrap();
    assert_eq!(f.target, "198.51.100.20:32769".parse().unwrap());
    assert_eq!(
        (f.weight, f.container.as_str()),
        (Some(50), "web-1 (0123456789ab)")
    );
}

#[test]
fn an_unpublished_port_is_reached_at_the_containers_own_address() {
    let c = container(
        "\"xlb.vip\":\"203.0.113.10:80/tcp\",\"xlb.port\":\"3000\",\"xlb.health.path\":\"/ready\"",
        "\"3000/tcp\":{},\"9090/tcp\":{}",
        "",
        "\"routed\":{\"IPAddress\":\"198.51.100.77\"}",
        None,
    );
    let f = target_of(&c, host(), &vips(), Some("routed")).unwrap();
    assert_eq!(f.target, "198.51.100.77:3000".parse().unwrap());
    assert_eq!(f.health_path.as_deref(), Some("/ready"));
    assert!(matches!(
        target_of(&c, host(), &vips(), Some("other")),
        Err(Skip::Bad(_))
    ));
}

#[test]
fn wrong_or_ambiguous_labels_are_refused() {
    let unknown = container(
        "\"xlb.vip\":\"203.0.113.99:80/tcp\"",
        "\"80/tcp\":{}",
        "",
        "",
        None,
    );
    let e = target_of(&unknown, host(), &vips(), None).unwrap_err();
    assert!(
        matches!(&e, Skip::Bad(m) if m.contains("names no VIP")),
        "{e:?}"
    );
    let two = container(
        "\"xlb.vip\":\"203.0.113.10:80/tcp\"",
        "\"80/tcp\":{},\"81/tcp\":{}",
        "",
        "",
        None,
    );
    let e = target_of(&two, host(), &vips(), None).unwrap_err();
    assert!(
        matches!(&e, Skip::Bad(m) if m.contains("say which")),
        "{e:?}"
    );
    let weight = container(
        "\"xlb.vip\":\"203.0.113.10:80/tcp\",\"xlb.weight\":\"heavy\"",
        "\"80/tcp\":{}",
        "",
        "",
        None,
    );
    assert!(matches!(
        target_of(&weight, host(), &vips(), None),
        Err(Skip::Bad(_))
    ));
}

#[test]
fn a_docker_health_check_must_say_healthy() {
    let mk = |h| {
        container(
            "\"xlb.vip\":\"203.0.113.10:53/udp\"",
            "\"53/udp\":{}",
            "\"53/udp\":[{\"HostIp\":\"\",\"HostPort\":\"32770\"}]",
            "",
            Some(h),
        )
    };
    assert!(matches!(
        target_of(&mk("starting"), host(), &vips(), None),
        Err(Skip::NotReady(_))
    ));
    assert!(matches!(
        target_of(&mk("unhealthy"), host(), &vips(), None),
        Err(Skip::NotReady(_))
    ));
    let f = target_of(&mk("healthy"), host(), &vips(), None).unwrap();
    assert_eq!(f.target, "198.51.100.20:32770".parse().unwrap());
}
