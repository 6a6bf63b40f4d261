#!/usr/bin/env python3
"""Where a q35 guest's migration downtime goes: bare QEMU, no Panal in the path.

Boots the test guest (scripts/build-guest-image.sh) in a source QEMU, migrates it N times over a
Unix socket into a fresh destination QEMU on this machine, and prints QEMU's downtime with the
timestamps of QMP events relative to the source's STOP (the destination's RESUME is when the
guest runs again). Varies what the guest carries, to see what its device state costs:

  scripts/measure-q35-downtime.py --ports 16 --devices    # Panal's q35 guests before slots
  scripts/measure-q35-downtime.py --ports 4 --devices     # a VM with the default 4 slots
  scripts/measure-q35-downtime.py --ports 4 --disk        # plus a local disk copied over NBD
  scripts/measure-q35-downtime.py --machine-opts sata=off,smbus=off   # fewer chipset devices

Run it on an otherwise idle machine (TCG guests: the figures move with the CPU it gets).
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time

GUEST = os.environ.get('PANAL_GUEST_DIR', os.path.expanduser('~/.cache/panal/guest'))


class Qmp:
    """A QMP connection that keeps the events it reads on the way."""

    def __init__(self, path):
        for _ in range(200):
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(path)
                break
            except OSError:
                time.sleep(0.05)
        self.file = self.sock.makefile('rw')
        self.events = []
        json.loads(self.file.readline())
        self.cmd('qmp_capabilities')

    def _read(self):
        msg = json.loads(self.file.readline())
        if 'event' in msg:
            self.events.append(msg)
        return msg

    def cmd(self, execute, **args):
        self.file.write(json.dumps({'execute': execute, 'arguments': args}) + '\n')
        self.file.flush()
        while True:
            msg = self._read()
            if 'return' in msg:
                return msg['return']
            if 'error' in msg:
                raise RuntimeError(f'{execute}: {msg["error"]}')

    def wait_event(self, pred):
        while True:
            for e in self.events:
                if pred(e):
                    self.events.remove(e)
                    return e
            self._read()

    def seen(self, pred):
        """An event already sent (a command first, so that QEMU has flushed its events)."""
        self.cmd('query-status')
        return next((e for e in self.events if pred(e)), None)


def stamp(event):
    return event['timestamp']['seconds'] + event['timestamp']['microseconds'] / 1e6


def migration(status):
    return lambda e: e['event'] == 'MIGRATION' and e['data']['status'] == status


def launch(work, name, args, incoming):
    d = os.path.join(work, name)
    os.makedirs(d)
    cmd = ['qemu-system-x86_64', '-nodefaults', '-no-user-config', '-display', 'none',
           '-machine', ','.join(['q35'] + ([args.machine_opts] if args.machine_opts else [])),
           '-accel', 'tcg,tb-size=64', '-m', str(args.memory),
           '-smp', f'1,maxcpus={args.maxcpus}',
           '-kernel', f'{GUEST}/vmlinux', '-initrd', f'{GUEST}/initramfs.cpio.gz',
           '-append', 'console=ttyS0 quiet', '-serial', f'file:{d}/console.log',
           '-qmp', f'unix:{d}/qmp.sock,server=on,wait=off']
    for i in range(args.ports):
        cmd += ['-device', f'pcie-root-port,id=p{i},chassis={i + 1}']
    if args.devices:
        cmd += ['-device', 'virtio-rng-pci', '-device', 'virtio-balloon-pci', '-device', 'pvpanic-pci']
    if args.disk:
        img = os.path.join(d, 'disk.qcow2')
        subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', img, '1G'], check=True)
        node = {'driver': 'qcow2', 'node-name': 'disk0',
                'file': {'driver': 'file', 'filename': img}}
        cmd += ['-blockdev', json.dumps(node), '-device', 'virtio-blk-pci,drive=disk0,id=vda']
    if incoming:
        cmd += ['-incoming', 'defer']
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(d, 'qemu.log'), 'w'))
    return proc, Qmp(os.path.join(d, 'qmp.sock'))


def migrate_once(args):
    work = tempfile.mkdtemp(prefix='panal-q35-downtime-')
    procs = []
    try:
        sp, src = launch(work, 'src', args, False)
        procs.append(sp)
        dp, dst = launch(work, 'dst', args, True)
        procs.append(dp)
        deadline = time.time() + 120
        while 'PANAL-GUEST-READY' not in open(f'{work}/src/console.log', errors='replace').read():
            if time.time() > deadline:
                raise TimeoutError('the guest did not boot in 120 s')
            time.sleep(0.2)
        caps = [{'capability': 'events', 'state': True},
                {'capability': 'return-path', 'state': True}]
        if args.disk:
            # As Panal does it: the destination exports its disk over NBD, the source mirrors
            # into it, and the migration pauses before the switch-over to finish the copy.
            caps.append({'capability': 'pause-before-switchover', 'state': True})
            dst.cmd('nbd-server-start', addr={'type': 'unix', 'data': {'path': f'{work}/nbd.sock'}})
            dst.cmd('block-export-add', type='nbd', id='e0', writable=True, name='disk0',
                    **{'node-name': 'disk0'})
            src.cmd('blockdev-add', driver='nbd', export='disk0',
                    server={'type': 'unix', 'path': f'{work}/nbd.sock'}, **{'node-name': 'mig0'})
            src.cmd('blockdev-mirror', device='disk0', target='mig0', sync='full',
                    **{'job-id': 'j0', 'auto-dismiss': False})
            src.wait_event(lambda e: e['event'] == 'BLOCK_JOB_READY')
        dst.cmd('migrate-set-capabilities', capabilities=caps[:2])
        src.cmd('migrate-set-capabilities', capabilities=caps)
        # Unthrottled, as Panal migrates by default (QEMU's own default is 128 MiB/s).
        src.cmd('migrate-set-parameters', **{'downtime-limit': 300, 'max-bandwidth': 1 << 40})
        dst.cmd('migrate-incoming', uri=f'unix:{work}/mig.sock')
        src.cmd('migrate', uri=f'unix:{work}/mig.sock')
        marks = {}
        if args.disk:
            marks['pre-switchover'] = stamp(src.wait_event(migration('pre-switchover')))
            src.cmd('block-job-cancel', device='j0', force=False)
            ended = src.wait_event(lambda e: e['event'] in ('BLOCK_JOB_COMPLETED', 'BLOCK_JOB_CANCELLED'))
            marks['disk-done'] = stamp(ended)
            src.cmd('job-dismiss', id='j0')
            src.cmd('blockdev-del', **{'node-name': 'mig0'})
            src.cmd('migrate-continue', state='pre-switchover')
        marks['src-completed'] = stamp(src.wait_event(
            lambda e: e['event'] == 'MIGRATION' and e['data']['status'] in ('completed', 'failed')))
        marks['dst-RESUME'] = stamp(dst.wait_event(lambda e: e['event'] == 'RESUME'))
        stop = src.seen(lambda e: e['event'] == 'STOP')
        device = src.seen(migration('device'))
        if device:
            marks['src-device'] = stamp(device)
        q = src.cmd('query-migrate')
        if q['status'] != 'completed':
            raise RuntimeError(f'migration {q["status"]}')
        rel = sorted(((k, (v - stamp(stop)) * 1000) for k, v in marks.items()), key=lambda x: x[1])
        return q['downtime'], q['total-time'], rel
    finally:
        for p in procs:
            p.kill()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--ports', type=int, default=4, help='empty PCIe root ports (Panal: the VM\'s slots)')
    ap.add_argument('--machine-opts', default='', help='q35 machine options, e.g. sata=off,smbus=off')
    ap.add_argument('--maxcpus', type=int, default=1, help='vCPUs the guest may grow to (Panal: 4)')
    ap.add_argument('--devices', action='store_true', help="Panal's virtio-rng, virtio-balloon and pvpanic")
    ap.add_argument('--disk', action='store_true', help='a local disk, copied to the destination over NBD')
    ap.add_argument('--memory', type=int, default=256, help='guest memory (MiB)')
    ap.add_argument('-n', type=int, default=5, help='migrations')
    args = ap.parse_args()
    downs = []
    for i in range(args.n):
        down, total, rel = migrate_once(args)
        downs.append(down)
        marks = '  '.join(f'{k} +{v:.1f}' for k, v in rel)
        print(f'{i}: downtime {down} ms  total {total} ms  (after STOP, ms: {marks})', flush=True)
    downs.sort()
    print(f'q35 {args.machine_opts}, {args.ports} root ports, maxcpus {args.maxcpus}, '
          f'devices {args.devices}, disk {args.disk}: '
          f'downtime p50 {downs[len(downs) // 2]} ms  min {downs[0]}  max {downs[-1]}  (n {args.n})')


if __name__ == '__main__':
    main()
