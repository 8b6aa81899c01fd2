//! A small filesystem of the test's own, to fill up: a tmpfs of a given
//! size mounted on a fresh temp dir (needs root, as CI runs), unmounted and
//! removed on drop, also when the test fails.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts a tmpfs of `mib` MiB.
    pub fn mount(mib: u32) -> SmallDisk {
        crate::netlab::require_root();
        let dir = tempfile::Builder::new()
            .prefix("skiff-small-disk-")
            .tempdir()
            .expect("temp dir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m,mode=0700")])
            .arg(format!("skiff-test-{}", std::process::id()))
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount a tmpfs on {}: {}",
            dir.path().display(),
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills what is left with a file, until the disk says it is full.
    /// Returns the file, to remove when space should come back.
    pub fn fill(&self) -> PathBuf {
        let path = self.dir.path().join("filler");
        let mut f = std::fs::File::create(&path).expect("create the filler");
        let chunk = vec![0xa5u8; 64 * 1024];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("fill {}: {e}", path.display()),
            }
        }
        // Also the last partial block, byte by byte.
        while let Ok(1) = f.write(&chunk[..1]) {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazily: a process the test started may still hold a file open.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// A real ext4 filesystem of the test's own on a loop device (needs root),
/// to break as disks break: an error that turns it read-only, or a
/// shutdown after which every write and fsync fails with EIO. `remount`
/// is the operator's repair: unmount (once nothing holds a file on it),
/// fsck, mount again at the same path.
pub struct LoopDisk {
    /// Holds the image and the mount point; removed last.
    _dir: tempfile::TempDir,
    mount: PathBuf,
    image: PathBuf,
}

impl LoopDisk {
    /// Makes an ext4 image of `mib` MiB and mounts it.
    pub fn mount(mib: u64) -> LoopDisk {
        crate::netlab::require_root();
        let dir = tempfile::Builder::new()
            .prefix("skiff-loop-disk-")
            .tempdir()
            .expect("temp dir");
        let image = dir.path().join("disk.img");
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).expect("mount point");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(mib << 20))
            .expect("the image file");
        run("mkfs.ext4", &["-q", "-F"], &[&image]);
        let disk = LoopDisk {
            _dir: dir,
            mount,
            image,
        };
        disk.attach();
        disk
    }

    fn attach(&self) {
        // errors=remount-ro: a filesystem error turns it read-only, as
        // Debian mounts its root.
        run(
            "mount",
            &["-o", "loop,errors=remount-ro"],
            &[&self.image, &self.mount],
        );
    }

    pub fn path(&self) -> &Path {
        &self.mount
    }

    /// The loop device's name (`loop3`), as /sys/fs/ext4 knows it.
    fn device(&self) -> String {
        let out = Command::new("findmnt")
            .args(["-n", "-o", "SOURCE"])
            .arg(&self.mount)
            .output()
            .expect("run findmnt");
        let source = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(source.starts_with("/dev/loop"), "{source}");
        source.trim_start_matches("/dev/").to_string()
    }

    /// A filesystem error (ext4's own test knob): the kernel turns the
    /// filesystem read-only at once, under open files; writes get EROFS.
    pub fn fail_read_only(&self) {
        let knob = format!("/sys/fs/ext4/{}/trigger_fs_error", self.device());
        std::fs::write(&knob, "1").unwrap_or_else(|e| panic!("write {knob}: {e}"));
    }

    /// Shuts the filesystem down (EXT4_IOC_SHUTDOWN, after committing its
    /// journal): from now on every write and fsync fails with EIO and
    /// what was written after it never reaches the disk. (NOLOGFLUSH, the
    /// harsher flag, loses even writes whose fdatasync returned under this
    /// kernel: about one in 6,000 in a plain loop of them.)
    pub fn shut_down(&self) {
        let script = "import fcntl, os, struct, sys\n\
                      fd = os.open(sys.argv[1], os.O_RDONLY)\n\
                      fcntl.ioctl(fd, 0x8004587D, struct.pack('I', 1))\n";
        run("python3", &["-c", script], &[&self.mount]);
    }

    /// The image file (unmounted, it can be copied or replaced).
    pub fn image(&self) -> &Path {
        &self.image
    }

    /// Unmounts (waiting up to `within` for the last open file on it to
    /// close), checks and repairs the filesystem, mounts it again.
    pub fn remount(&self, within: std::time::Duration) {
        self.unmount(within);
        self.fsck();
        self.mount_again();
    }

    /// Unmounts, once nothing holds a file on it (up to `within`).
    pub fn unmount(&self, within: std::time::Duration) {
        let deadline = std::time::Instant::now() + within;
        loop {
            let out = Command::new("umount")
                .arg(&self.mount)
                .output()
                .expect("run umount");
            if out.status.success() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} still busy after {within:?}: {}",
                self.mount.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// e2fsck -fy, as an operator would before mounting a broken disk.
    pub fn fsck(&self) {
        let out = Command::new("e2fsck")
            .arg("-fy")
            .arg(&self.image)
            .output()
            .expect("run e2fsck");
        // 0: clean, 1: errors corrected; more is a failure.
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "e2fsck {}: {}: {}",
            self.image.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
    }

    /// Mounts the image again at the same path.
    pub fn mount_again(&self) {
        self.attach();
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        // Lazily: a process may still hold a file open; the loop device
        // is detached (autoclear) when the last user lets go.
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

fn run(program: &str, args: &[&str], paths: &[&Path]) {
    let out = Command::new(program)
        .args(args)
        .args(paths)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} {paths:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
