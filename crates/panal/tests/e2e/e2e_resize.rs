//! Live resize seen from inside real guests, through the API: a microvm VM's memory shrunk
//! through the balloon lowers the guest's MemTotal; a q35 VM booted from the `tiny-disk` image
//! gets a hot-plugged vCPU its kernel sees, and what it wrote to its disk survives a stop and
//! start (the per-VM copy-on-write overlay is kept); slots added while it is stopped are PCIe
//! root ports its kernel finds after the start.

use crate::common_e2e;

use common_e2e::console::Console;
use common_e2e::{BOOT, E2e, READY_LINE, op_ok, tiny, wait_log, wait_phase, wait_vm};
use panal_types::vm::{MachineProfile, VmCreate, VmPhase, VmUpdate};
use std::time::Duration;

const CMD: Duration = Duration::from_secs(30);

fn mem_total_kib(meminfo: &str) -> u64 {
    meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in {meminfo:?}"))
}

async fn resized(e: &E2e, name: &str, update: VmUpdate) {
    e.client
        .update_vm(None, name, &update)
        .await
        .expect("update accepted");
    let vm = wait_vm(&e.client, name, "a resize event", CMD, |v| {
        v.status
            .events
            .iter()
            .any(|ev| ev.reason.starts_with("Resize"))
    })
    .await;
    let ev = vm
        .status
        .events
        .iter()
        .rev()
        .find(|ev| ev.reason.starts_with("Resize"));
    assert_eq!(
        ev.map(|e| e.reason.as_str()),
        Some("Resized"),
        "not applied live: {ev:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_and_vcpu_resizes_are_seen_by_the_guests_and_disks_persist() {
    let e = E2e::start().await;
    let c = &e.client;
    // Both boot together; the checks then run one after the other.
    c.create_vm(&tiny("balloon", 256)).await.expect("create");
    let disk = VmCreate {
        name: "disk".into(),
        image: Some("tiny-disk".into()),
        machine: Some(MachineProfile::Q35),
        vcpus: Some(1),
        memory_bytes: Some(256 << 20),
        ..VmCreate::default()
    };
    c.create_vm(&disk).await.expect("create");

    // Memory down through the balloon: the guest's MemTotal drops.
    wait_log(c, "balloon", READY_LINE, 1, BOOT).await;
    let mut con = Console::open(c, "balloon").await;
    let before = mem_total_kib(&con.run("cat /proc/meminfo", CMD).await);
    resized(
        &e,
        "balloon",
        VmUpdate {
            memory_bytes: Some(160 << 20),
            ..VmUpdate::default()
        },
    )
    .await;
    let mut after = before;
    // The guest's balloon driver gives the pages up over a moment: poll, bounded.
    for _ in 0..20 {
        after = mem_total_kib(&con.run("cat /proc/meminfo", CMD).await);
        if before - after > 80 * 1024 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        before - after > 80 * 1024,
        "MemTotal {before} -> {after} KiB"
    );
    assert_eq!(
        c.vm(None, "balloon").await.unwrap().spec.memory_bytes,
        160 << 20
    );
    drop(con);

    // q35 from a disk image: a hot-plugged vCPU, and writes that survive stop and start.
    let log = wait_log(c, "disk", READY_LINE, 1, BOOT).await;
    assert!(log.contains("root=/dev/vda"), "booted from the disk: {log}");
    let mut con = Console::open(c, "disk").await;
    let out = con
        .run("echo persisted > /root/mark; sync; cat /root/mark", CMD)
        .await;
    assert!(out.contains("persisted"), "{out}");
    let ports_before = root_ports(&mut con).await;
    resized(
        &e,
        "disk",
        VmUpdate {
            vcpus: Some(2),
            ..VmUpdate::default()
        },
    )
    .await;
    let mut seen = String::new();
    for _ in 0..20 {
        seen = con
            .run("ls -d /sys/devices/system/cpu/cpu[0-9]*", CMD)
            .await;
        if seen.contains("cpu1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        seen.contains("cpu1"),
        "the guest does not see the new vCPU: {seen}"
    );
    drop(con);
    op_ok(c, &c.stop_vm(None, "disk", false).await.unwrap(), BOOT).await;
    wait_phase(c, "disk", VmPhase::Stopped, BOOT).await;
    let slots = c.vm(None, "disk").await.unwrap().spec.hotplug_slots;
    c.update_vm(
        None,
        "disk",
        &VmUpdate {
            hotplug_slots: Some(slots + 3),
            ..VmUpdate::default()
        },
    )
    .await
    .expect("a stopped VM takes more slots");
    op_ok(c, &c.start_vm(None, "disk").await.unwrap(), BOOT).await;
    wait_log(c, "disk", READY_LINE, 2, BOOT).await;
    let mut con = Console::open(c, "disk").await;
    let out = con.run("cat /root/mark", CMD).await;
    assert!(
        out.contains("persisted"),
        "the disk lost its write across stop/start: {out}"
    );
    let out = con
        .run("ls -d /sys/devices/system/cpu/cpu[0-9]*", CMD)
        .await;
    assert!(out.contains("cpu1"), "2 vCPUs after the restart: {out}");
    assert_eq!(
        root_ports(&mut con).await,
        ports_before + 3,
        "the guest finds the three slots added while it was stopped"
    );
}

/// PCI bridges (class 0x0604: a q35 VM's PCIe root ports) the guest's kernel found.
async fn root_ports(con: &mut Console) -> usize {
    let out = con.run("cat /sys/bus/pci/devices/*/class", CMD).await;
    out.lines()
        .filter(|l| l.trim().starts_with("0x0604"))
        .count()
}
