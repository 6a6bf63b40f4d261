//! Volumes in a real guest, through the API: a volume hot-plugged into a running q35 VM appears
//! in the guest as a virtio disk with the volume's serial, keeps what the guest wrote, grows
//! live (the guest sees the new size), and is hot-unplugged (the guest sees it go); the host's
//! file has the data and the new size afterwards, and a linked clone of it starts with the same
//! bytes without changing its parent. A live snapshot of a VM's volumes is reverted; a
//! hypervisor killed while its guest writes leaves a volume that passes `qemu-img check`.

use crate::common_e2e;

use common_e2e::console::Console;
use common_e2e::{BOOT, E2e, READY_LINE, operation_ok, tiny, wait_log, wait_vm};
use panal_types::vm::MachineProfile;
use panal_types::volume::{Volume, VolumeCreate, VolumeSource};
use std::path::Path;
use std::time::Duration;

const CMD: Duration = Duration::from_secs(30);
const MARK: &str = "panal-volume-mark-7d1f";

/// The guest's disks as "name serial size-in-sectors" lines.
const LIST_DISKS: &str = "for d in /sys/block/vd*; do [ -e $d ] && echo DISK $(basename $d) $(cat $d/serial) $(cat $d/size); done";

/// The guest's disk whose serial starts the volume's id, with its size in 512-byte sectors.
fn find_disk(listing: &str, v: &Volume) -> Option<(String, u64)> {
    let serial: String =
        v.id.to_string()
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(20)
            .collect();
    listing.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next()? == "DISK").then_some(())?;
        let (name, ser, size) = (f.next()?, f.next()?, f.next()?);
        (ser == serial).then(|| (name.to_owned(), size.parse().unwrap_or(0)))
    })
}

async fn poll_guest(con: &mut Console, what: &str, mut ok: impl FnMut(&str) -> bool) -> String {
    let mut last = String::new();
    for _ in 0..60 {
        last = con.run(LIST_DISKS, CMD).await;
        if ok(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("{what} not seen in the guest; its disks:\n{last}");
}

fn qemu_img_info(path: &Path) -> serde_json::Value {
    let out = std::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(path)
        .output()
        .expect("qemu-img info");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// The first sector of a volume file, through qemu-img (whatever its format).
fn first_sector(path: &Path, dir: &Path) -> Vec<u8> {
    let raw = dir.join("sector.raw");
    let out = std::process::Command::new("qemu-img")
        .args(["dd", "-U", "bs=512", "count=1", "-O", "raw"])
        .arg(format!("if={}", path.display()))
        .arg(format!("of={}", raw.display()))
        .output()
        .expect("qemu-img dd");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(raw).expect("read sector")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_is_hot_plugged_grown_and_unplugged_in_a_running_guest() {
    let e = E2e::start().await;
    let c = &e.client;
    let mut req = tiny("vol", 256);
    req.machine = Some(MachineProfile::Q35);
    c.create_vm(&req).await.expect("create VM");
    let created = c
        .create_volume(&VolumeCreate {
            name: "data".into(),
            project: None,
            size_bytes: Some(64 << 20),
            format: None,
            pool: None,
            host: None,
            source: None,
        })
        .await
        .expect("create volume");
    operation_ok(c, &created.operation, CMD).await;
    let vol = c.volume(None, "data").await.unwrap();
    let file = e.data.join("pools/default").join(&vol.file);
    assert_eq!(qemu_img_info(&file)["virtual-size"], 64u64 << 20);

    wait_log(c, "vol", READY_LINE, 1, BOOT).await;
    wait_vm(c, "vol", "its create operation done", BOOT, |v| {
        v.status.operation.is_none()
    })
    .await;
    let mut con = Console::open(c, "vol").await;

    // Hot attach: the disk appears with the volume's serial; the guest writes to it.
    let a = c.attach_volume(None, "data", "vol").await.expect("attach");
    operation_ok(c, &a.operation, BOOT).await;
    let listing = poll_guest(&mut con, "the attached disk", |l| {
        find_disk(l, &vol).is_some()
    })
    .await;
    let (dev, sectors) = find_disk(&listing, &vol).unwrap();
    assert_eq!(sectors, (64 << 20) / 512, "{listing}");
    let out = con
        .run(
            &format!(
                "echo {MARK} | dd of=/dev/{dev} bs=512 count=1 conv=sync,fsync 2>/dev/null; \
                 dd if=/dev/{dev} bs=512 count=1 2>/dev/null | head -c {}",
                MARK.len()
            ),
            CMD,
        )
        .await;
    assert!(out.contains(MARK), "written and read back: {out}");

    // Live growth: the guest sees 128 MiB without a reboot.
    let g = c
        .resize_volume(None, "data", 128 << 20)
        .await
        .expect("resize");
    operation_ok(c, &g.operation, BOOT).await;
    poll_guest(&mut con, "the grown disk", |l| {
        find_disk(l, &vol).is_some_and(|(_, s)| s == (128 << 20) / 512)
    })
    .await;

    // Hot detach: the disk goes away in the guest; the volume is free again.
    let d = c.detach_volume(None, "data").await.expect("detach");
    operation_ok(c, &d.operation, Duration::from_secs(120)).await;
    poll_guest(&mut con, "the disk gone", |l| find_disk(l, &vol).is_none()).await;
    let vol = c.volume(None, "data").await.unwrap();
    assert_eq!(vol.attached_to, None);
    assert_eq!(vol.size_bytes, 128 << 20);
    assert!(
        wait_vm(c, "vol", "no volumes", CMD, |v| v.spec.volumes.is_empty())
            .await
            .status
            .events
            .iter()
            .any(|ev| ev.reason == "DiskDetached")
    );
    drop(con);

    // On the host: the data the guest synced and the new size are in the file.
    let info = qemu_img_info(&file);
    assert_eq!(info["virtual-size"], 128u64 << 20);
    let scratch = tempfile::tempdir().unwrap();
    let sector = first_sector(&file, scratch.path());
    assert!(sector.starts_with(MARK.as_bytes()), "{:?}", &sector[..32]);

    // A linked clone starts with the parent's bytes and is a child of its file.
    let clone = c
        .create_volume(&VolumeCreate {
            name: "data-clone".into(),
            project: None,
            size_bytes: None,
            format: None,
            pool: None,
            host: None,
            source: Some(VolumeSource::Volume {
                volume: "data".into(),
                linked: true,
            }),
        })
        .await
        .expect("clone");
    operation_ok(c, &clone.operation, CMD).await;
    let cfile = e.data.join("pools/default").join(&clone.volume.file);
    assert_eq!(qemu_img_info(&cfile)["backing-filename"], vol.file.as_str());
    assert!(first_sector(&cfile, scratch.path()).starts_with(MARK.as_bytes()));
}

/// The snapshot check in a real guest: data written and synced on a volume, a live
/// snapshot of the VM (its disks' I/O held for a moment), the data changed, the VM stopped and
/// reverted, and after the next boot the data's checksum is the one from before. Then the
/// hypervisor is killed with SIGKILL while the guest writes: the volume passes `qemu-img check`
/// and what was synced before the kill is intact.
/// The checksum of the first MiB of a guest disk.
async fn md5(con: &mut Console, dev: &str) -> String {
    let out = con
        .run(
            &format!("dd if=/dev/{dev} bs=1M count=1 2>/dev/null | md5sum"),
            CMD,
        )
        .await;
    out.split_whitespace().next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_snapshot_is_reverted_and_a_killed_hypervisor_leaves_a_sound_volume() {
    use panal_types::volume::SnapshotStep::{Create, Revert};
    let e = E2e::start().await;
    let c = &e.client;
    let mut req = tiny("snap", 256);
    req.machine = Some(MachineProfile::Q35);
    c.create_vm(&req).await.expect("create VM");
    let created = c
        .create_volume(&VolumeCreate {
            name: "data".into(),
            project: None,
            size_bytes: Some(32 << 20),
            format: None,
            pool: None,
            host: None,
            source: None,
        })
        .await
        .expect("create volume");
    operation_ok(c, &created.operation, CMD).await;
    let vol = created.volume;
    wait_log(c, "snap", READY_LINE, 1, BOOT).await;
    wait_vm(c, "snap", "its create operation done", BOOT, |v| {
        v.status.operation.is_none()
    })
    .await;
    let a = c.attach_volume(None, "data", "snap").await.expect("attach");
    operation_ok(c, &a.operation, BOOT).await;
    let mut con = Console::open(c, "snap").await;
    let listing = poll_guest(&mut con, "the attached disk", |l| {
        find_disk(l, &vol).is_some()
    })
    .await;
    let (dev, _) = find_disk(&listing, &vol).unwrap();
    // 1 MiB of known data, its checksum, synced.
    con.run(
        &format!("dd if=/dev/urandom of=/dev/{dev} bs=1M count=1 conv=fsync 2>/dev/null; sync"),
        CMD,
    )
    .await;
    let before = md5(&mut con, &dev).await;
    assert_eq!(before.len(), 32, "md5: {before:?}");

    let op = c
        .vm_snapshot(None, "snap", "s1", Create)
        .await
        .expect("snapshot");
    operation_ok(c, &op, BOOT).await;
    let done = c.operation(&op.id.to_string()).await.unwrap();
    assert!(
        done.progress.message.contains("I/O held"),
        "{:?}",
        done.progress
    );
    eprintln!("live VM snapshot: {}", done.progress.message);

    con.run(
        &format!("dd if=/dev/zero of=/dev/{dev} bs=1M count=1 conv=fsync 2>/dev/null; sync"),
        CMD,
    )
    .await;
    assert_ne!(md5(&mut con, &dev).await, before, "the data changed");
    drop(con);

    // Revert needs the disks out of use: refused while running, done once stopped.
    let e2 = c.vm_snapshot(None, "snap", "s1", Revert).await.unwrap_err();
    assert_eq!(e2.status(), Some(409), "{e2}");
    let stop = c.stop_vm(None, "snap", true).await.unwrap();
    operation_ok(c, &stop.operation, BOOT).await;
    let op = c
        .vm_snapshot(None, "snap", "s1", Revert)
        .await
        .expect("revert");
    operation_ok(c, &op, BOOT).await;
    let start = c.start_vm(None, "snap").await.unwrap();
    operation_ok(c, &start.operation, BOOT).await;
    wait_log(c, "snap", READY_LINE, 2, BOOT).await;
    let mut con = Console::open(c, "snap").await;
    let listing = poll_guest(&mut con, "the disk after the boot", |l| {
        find_disk(l, &vol).is_some()
    })
    .await;
    let (dev, _) = find_disk(&listing, &vol).unwrap();
    assert_eq!(md5(&mut con, &dev).await, before, "the checksum is back");

    // SIGKILL while the guest writes (the first 4 MiB): a marker synced first at 8 MiB must
    // survive, and the file must check.
    con.run(
        &format!(
            "echo {MARK} | dd of=/dev/{dev} bs=512 seek=16384 count=1 conv=sync,fsync 2>/dev/null; sync"
        ),
        CMD,
    )
    .await;
    con.send(&format!(
        "while true; do dd if=/dev/urandom of=/dev/{dev} bs=64k seek=1 count=64 2>/dev/null; done &"
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let vm = c.vm(None, "snap").await.unwrap();
    let pid = common_e2e::qemu_pid(&e.data, vm.id).expect("qemu pid");
    common_e2e::sigkill(pid);
    drop(con);
    // The restart policy brings it back; its agent checks the volume (and frees what the
    // interrupted writes leaked) before QEMU opens it again.
    wait_vm(c, "snap", "restarted after the kill", BOOT, |v| {
        v.status.restarts >= 1 && v.status.phase == panal_types::vm::VmPhase::Running
    })
    .await;
    let stop = c.stop_vm(None, "snap", true).await.expect("stop");
    operation_ok(c, &stop.operation, BOOT).await;
    let file = e.data.join("pools/default").join(&vol.file);
    let check = std::process::Command::new("qemu-img")
        .args(["check", "-U"])
        .arg(&file)
        .output()
        .expect("qemu-img check");
    assert!(
        check.status.success(),
        "qemu-img check: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let scratch = tempfile::tempdir().unwrap();
    let raw = scratch.path().join("marker.raw");
    let out = std::process::Command::new("qemu-img")
        // qemu-img dd counts `count` from the start of the input, not from `skip`.
        .args([
            "dd",
            "-U",
            "bs=512",
            "skip=16384",
            "count=16385",
            "-O",
            "raw",
        ])
        .arg(format!("if={}", file.display()))
        .arg(format!("of={}", raw.display()))
        .output()
        .expect("qemu-img dd");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = std::fs::read(&raw).unwrap();
    assert!(
        got.starts_with(MARK.as_bytes()),
        "synced marker lost: {:?}",
        &got[..got.len().min(32)]
    );
}

/// A VM boots from a linked clone of a volume copied from the `tiny-disk` image, writes to its
/// root file system, and after a stop and start finds what it wrote; the parent volume's file is
/// byte for byte what it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_clone_boots_and_diverges_without_touching_its_parent() {
    let e = E2e::start().await;
    let c = &e.client;
    let mut base = VolumeCreate {
        name: "base".into(),
        project: None,
        size_bytes: None,
        format: None,
        pool: None,
        host: None,
        source: Some(VolumeSource::Image {
            image: "tiny-disk".into(),
        }),
    };
    let a = c.create_volume(&base).await.expect("copy the image");
    operation_ok(c, &a.operation, BOOT).await;
    base.name = "child".into();
    base.source = Some(VolumeSource::Volume {
        volume: "base".into(),
        linked: true,
    });
    let b = c.create_volume(&base).await.expect("linked clone");
    operation_ok(c, &b.operation, BOOT).await;
    let pool = e.data.join("pools/default");
    let parent_file = pool.join(&a.volume.file);
    let digest = |p: &Path| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()))
    };
    let before = digest(&parent_file);

    let req = panal_types::vm::VmCreate {
        name: "from-clone".into(),
        boot_volume: Some("child".into()),
        machine: Some(MachineProfile::Q35),
        vcpus: Some(1),
        memory_bytes: Some(256 << 20),
        ..Default::default()
    };
    c.create_vm(&req).await.expect("create VM");
    let log = wait_log(c, "from-clone", READY_LINE, 1, BOOT).await;
    assert!(
        log.contains("root=/dev/vda"),
        "booted from its volume: {log}"
    );
    let mut con = Console::open(c, "from-clone").await;
    let out = con
        .run("echo diverged > /root/mark; sync; cat /root/mark", CMD)
        .await;
    assert!(out.contains("diverged"), "{out}");
    drop(con);
    // The boot volume goes with the VM.
    let e2 = c.detach_volume(None, "child").await.unwrap_err();
    assert_eq!(e2.status(), Some(409), "{e2}");
    let stop = c.stop_vm(None, "from-clone", false).await.unwrap();
    operation_ok(c, &stop.operation, BOOT).await;
    let start = c.start_vm(None, "from-clone").await.unwrap();
    operation_ok(c, &start.operation, BOOT).await;
    wait_log(c, "from-clone", READY_LINE, 2, BOOT).await;
    let mut con = Console::open(c, "from-clone").await;
    let out = con.run("cat /root/mark", CMD).await;
    assert!(out.contains("diverged"), "the clone kept its write: {out}");
    drop(con);
    assert_eq!(digest(&parent_file), before, "the parent is untouched");
    assert_eq!(
        c.volume(None, "base").await.unwrap().children,
        vec![panal_types::Name::parse("child").unwrap()]
    );
}
