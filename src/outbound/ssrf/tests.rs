use super::*;
use proptest::prelude::*;

fn blocked(s: &str) -> bool {
    Guard::default().check(s.parse().expect("ip")).is_err()
}

#[test]
fn every_non_public_range_is_blocked() {
    for ip in [
        "0.0.0.0",
        "0.1.2.3",
        "127.0.0.1",
        "127.255.255.254",
        "10.0.0.1",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "100.127.255.255",
        "192.0.0.8",
        "192.0.2.1",
        "198.51.100.7",
        "203.0.113.9",
        "198.18.0.1",
        "224.0.0.1",
        "239.255.255.250",
        "255.255.255.255",
        "240.0.0.1",
        "::",
        "::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "::ffff:10.1.2.3",
        "::127.0.0.1",
        "64:ff9b::7f00:1",
        "64:ff9b::a9fe:a9fe",
        "2002:7f00:1::",
        "2002:c0a8:101::1",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "ff02::1",
        "2001:db8::1",
        "2001::1",
        "100::1",
    ] {
        assert!(blocked(ip), "{ip} must be blocked");
    }
}

#[test]
fn public_addresses_pass() {
    for ip in [
        "1.1.1.1",
        "8.8.8.8",
        "93.184.216.34",
        "100.128.0.1",
        "172.32.0.1",
        "2606:4700::1111",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::1",
    ] {
        assert!(!blocked(ip), "{ip} is public");
    }
}

#[test]
fn allowed_cidrs_let_private_addresses_through() {
    let guard = Guard::new(vec!["127.0.0.0/8".parse().expect("net"), "fd00::/8".parse().expect("net")]);
    assert!(guard.check("127.0.0.1".parse().expect("ip")).is_ok());
    assert!(guard.check("fd00::5".parse().expect("ip")).is_ok());
    assert!(guard.check("10.0.0.1".parse().expect("ip")).is_err());
}

#[test]
fn the_error_names_the_address_and_the_rule() {
    let e = Guard::default().check("169.254.169.254".parse().expect("ip")).expect_err("blocked");
    assert_eq!(e.to_string(), "169.254.169.254 is link-local (169.254.0.0/16, cloud metadata)");
}

#[test]
fn one_bad_address_blocks_a_host() {
    let addrs: Vec<SocketAddr> = vec!["8.8.8.8:443".parse().expect("a"), "10.0.0.1:443".parse().expect("a")];
    assert!(Guard::default().check_all(&addrs).is_err());
}

#[tokio::test]
async fn hostnames_are_resolved_and_checked() {
    let e = Guard::default().resolve("localhost", 80).await.expect_err("localhost is loopback");
    assert!(matches!(e, GuardError::Blocked(_)), "{e}");
    let ok = Guard::new(vec!["127.0.0.0/8".parse().expect("net"), "::1/128".parse().expect("net")])
        .resolve("localhost", 80)
        .await
        .expect("allowed");
    assert!(!ok.is_empty());
    assert!(Guard::default().resolve("[::1]", 80).await.is_err(), "bracketed literals are checked too");
}

fn private_v4() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![
        any::<u32>().prop_map(|x| Ipv4Addr::from(0x0a00_0000 | (x & 0x00ff_ffff))),
        any::<u32>().prop_map(|x| Ipv4Addr::from(0xac10_0000 | (x & 0x000f_ffff))),
        any::<u32>().prop_map(|x| Ipv4Addr::from(0xc0a8_0000 | (x & 0x0000_ffff))),
        any::<u32>().prop_map(|x| Ipv4Addr::from(0x7f00_0000 | (x & 0x00ff_ffff))),
        any::<u32>().prop_map(|x| Ipv4Addr::from(0xa9fe_0000 | (x & 0x0000_ffff))),
        any::<u32>().prop_map(|x| Ipv4Addr::from(0x6440_0000 | (x & 0x003f_ffff))),
        any::<u32>().prop_map(|x| Ipv4Addr::from(x & 0x00ff_ffff)),
        any::<u32>().prop_map(|x| Ipv4Addr::from(0xe000_0000 | (x & 0x1fff_ffff))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn private_v4_is_blocked_in_every_form(v4 in private_v4()) {
        let g = Guard::default();
        prop_assert!(g.check(IpAddr::V4(v4)).is_err());
        prop_assert!(g.check(IpAddr::V6(v4.to_ipv6_mapped())).is_err());
        prop_assert!(g.check(IpAddr::V6(v4.to_ipv6_compatible())).is_err());
        let o = v4.octets();
        let nat64 = Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, u16::from_be_bytes([o[0], o[1]]), u16::from_be_bytes([o[2], o[3]]));
        prop_assert!(g.check(IpAddr::V6(nat64)).is_err());
    }

    #[test]
    fn ula_link_local_and_multicast_v6_are_blocked(x in any::<u128>()) {
        let g = Guard::default();
        for prefix in [0xfc00_u128 << 112, 0xfd00_u128 << 112, 0xfe80_u128 << 112, 0xff00_u128 << 112] {
            let mask = (1u128 << 112) - 1;
            let ip = Ipv6Addr::from(prefix | (x & mask & if prefix >> 112 == 0xfe80 { (1u128 << 118) - 1 } else { mask }));
            prop_assert!(g.check(IpAddr::V6(ip)).is_err(), "{}", ip);
        }
    }

    #[test]
    fn allowing_a_network_admits_exactly_it(x in any::<u32>()) {
        let g = Guard::new(vec!["10.1.0.0/16".parse().expect("net")]);
        let ip = Ipv4Addr::from(0x0a00_0000 | (x & 0x00ff_ffff));
        let inside = ip.octets()[1] == 1;
        prop_assert_eq!(g.check(IpAddr::V4(ip)).is_ok(), inside);
    }
}
