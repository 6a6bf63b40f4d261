//! A floating address with real QEMU guests on two namespace hosts: a guest of a network with
//! outbound NAT gets an address of the hosts' segment (an external network), the lab's gateway
//! namespace (the outside) reaches the guest's HTTP server through it, and after the VM is
//! live-migrated to the other host it is reached again through the same address.

use crate::common_e2e;
use crate::common_netns;
use crate::common_pool;

use common_e2e::{Scratch, tiny, wait_vm};
use common_netns::NetLab;
use common_pool::NsPool;
use panal_types::migration::VmMigrate;
use panal_types::network::{
    FloatingIpAssociate, FloatingIpCreate, NetworkCreate, NicRequest, SecurityGroupCreate,
    SecurityRuleCreate,
};
use panal_types::vm::VmPhase;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RUNNING: Duration = Duration::from_secs(120);
const GUEST: Duration = Duration::from_secs(60);

/// An HTTP GET of `addr:8080` from the gateway namespace answers `hello`.
async fn http_ok(addr: std::net::Ipv4Addr) -> bool {
    let go = async {
        let mut s = tokio::net::TcpStream::connect((addr, 8080)).await.ok()?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        Some(out.contains("hello"))
    };
    tokio::time::timeout(Duration::from_secs(3), go)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

async fn reached_within(addr: std::net::Ipv4Addr, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if http_ok(addr).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    false
}

#[test]
fn a_floating_address_reaches_the_guest_and_follows_it() {
    let scratch = Scratch::new();
    let lab = NetLab::new(2);
    let mut l = NsPool::new(&lab, scratch.data.clone());
    l.start_server();
    lab.block_on_in_gateway(async {
        let client = l.client().await;
        l.join_all(&client).await;
        client
            .create_network(&NetworkCreate {
                name: "lan".into(),
                cidr: "10.78.0.0/24".into(),
                outbound_nat: Some(true),
                ..NetworkCreate::default()
            })
            .await
            .expect("network");
        // The external network: the lab's own segment, its gateway the lab's gateway.
        let gw = lab.gateway_ip();
        let o = gw.octets();
        client
            .create_network(&NetworkCreate {
                name: "ext".into(),
                cidr: format!("{}.{}.{}.0/24", o[0], o[1], o[2]),
                gateway: Some(gw.to_string()),
                external: Some(true),
                ..NetworkCreate::default()
            })
            .await
            .expect("external network");
        let floating = std::net::Ipv4Addr::new(o[0], o[1], o[2], 200);
        client
            .create_security_group(&SecurityGroupCreate {
                name: "web".into(),
                project: None,
                rules: Some(vec![
                    SecurityRuleCreate {
                        direction: "ingress".into(),
                        protocol: Some("tcp".into()),
                        port_min: Some(8080),
                        ..SecurityRuleCreate::default()
                    },
                    SecurityRuleCreate {
                        direction: "egress".into(),
                        ..SecurityRuleCreate::default()
                    },
                ]),
            })
            .await
            .expect("group");
        let mut req = tiny("web", 128);
        req.nics = vec![NicRequest {
            network: "lan".into(),
            security_groups: vec!["web".into()],
            ..NicRequest::default()
        }];
        client.create_vm(&req).await.expect("create");
        let vm = wait_vm(&client, "web", "running", RUNNING, |v| {
            v.status.phase == VmPhase::Running
        })
        .await;
        let mut console = l.console(&vm).await;
        console
            .run(
                "mkdir -p /www && echo hello > /www/index.html && httpd -p 8080 -h /www",
                GUEST,
            )
            .await;

        let f = client
            .create_floating_ip(&FloatingIpCreate {
                network: "ext".into(),
                project: None,
                address: Some(floating.to_string()),
            })
            .await
            .expect("floating address");
        assert_eq!(f.address, floating);
        assert!(!http_ok(floating).await, "reached before it was associated");
        client
            .associate_floating_ip(
                None,
                &floating.to_string(),
                &FloatingIpAssociate {
                    vm: "web".into(),
                    nic: None,
                },
            )
            .await
            .expect("associate");
        assert!(
            reached_within(floating, Duration::from_secs(30)).await,
            "the outside never reached the guest through {floating}"
        );

        // Live migration to the other host: the address follows the VM.
        let from = vm.status.host.clone().unwrap();
        let to = if from.as_str() == "host-0" {
            "host-1"
        } else {
            "host-0"
        };
        drop(console);
        client
            .migrate_vm(
                None,
                "web",
                &VmMigrate {
                    to: Some(to.into()),
                    ..Default::default()
                },
            )
            .await
            .expect("migrate");
        wait_vm(&client, "web", "running on the other host", RUNNING, |v| {
            v.status.phase == VmPhase::Running
                && v.status.host.as_ref().map(|h| h.as_str()) == Some(to)
                && v.status.migration.is_none()
        })
        .await;
        assert!(
            reached_within(floating, Duration::from_secs(30)).await,
            "the outside never reached the guest through {floating} after it moved"
        );

        // Disassociated: no longer reached.
        client
            .disassociate_floating_ip(None, &floating.to_string())
            .await
            .expect("disassociate");
        let gone = Instant::now() + Duration::from_secs(20);
        while http_ok(floating).await {
            assert!(Instant::now() < gone, "still reached after disassociation");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }

        // Mapped again, then the VM is deleted: the address is unmapped with it and stays
        // allocated to the project.
        client
            .associate_floating_ip(
                None,
                &floating.to_string(),
                &FloatingIpAssociate {
                    vm: "web".into(),
                    nic: None,
                },
            )
            .await
            .expect("associate again");
        client.delete_vm(None, "web").await.expect("delete");
        let gone = Instant::now() + RUNNING;
        while client.vm(None, "web").await.is_ok() {
            assert!(Instant::now() < gone, "the VM was not deleted");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let f = client
            .floating_ip(None, &floating.to_string())
            .await
            .expect("floating address kept");
        assert!(
            f.vm.is_none() && f.nic.is_none(),
            "still mapped to a deleted VM: {f:?}"
        );
    });
}
