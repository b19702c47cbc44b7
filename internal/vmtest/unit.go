package vmtest

import (
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// GuestPreamble is shell that InstallTestUnit puts before the test's script.
// It defines:
//
//	vmtest_marker KEY [REST...]  writes "VMTEST KEY REST" to the serial port
//	                             in one write, on a line of its own
//	vmtest_cmd                   prints the script passed with CmdlineArg
//	                             (eval "$(vmtest_cmd)" runs it)
//
// The leading newline of a marker ends any half line the kernel or systemd
// left on the console, so the rig finds the marker even then.
const GuestPreamble = `vmtest_marker() { printf '\nVMTEST %s\n' "$*" > /dev/ttyS0; }
vmtest_cmd() {
	for w in $(cat /proc/cmdline); do
		case $w in vmtest.cmd=*) printf %s "${w#vmtest.cmd=}" | base64 -d ;; esac
	done
}
`

// cmdlineMax keeps CmdlineArg well under the x86 kernel's 2048-byte command
// line, leaving room for the rest of it.
const cmdlineMax = 1500

// CmdlineArg encodes a shell script as a kernel parameter, vmtest.cmd=BASE64,
// for a guest to run with eval "$(vmtest_cmd)". A dotted parameter is not
// passed to init and the kernel ignores it. Longer scripts belong on a disk.
func CmdlineArg(script string) (string, error) {
	arg := "vmtest.cmd=" + base64.StdEncoding.EncodeToString([]byte(script))
	if len(arg) > cmdlineMax {
		return "", fmt.Errorf("vmtest: script of %d bytes is too long for the kernel command line", len(script))
	}
	return arg, nil
}

// unitFile starts the test script once the system is up to basic.target
// (mounts, udev, journald), in parallel with the rest of multi-user.target
// rather than after it, so a test does not wait for unrelated units. Its
// output goes to the journal and the console, and a script that fails
// powers the guest off so that the test sees qemu exit rather than a hang.
const unitFile = `[Unit]
Description=peerup vmtest guest script
After=basic.target
FailureAction=poweroff

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/vmtest-run
ExecStopPost=/bin/sh -c 'printf "\nVMTEST unit-exit %%s %%s\n" "$$SERVICE_RESULT" "$$EXIT_STATUS" > /dev/ttyS0'
StandardInput=null
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
`

// InstallTestUnit installs into rootfs a systemd unit, vmtest.service, that
// runs script (/bin/sh, after GuestPreamble) at boot. The script writes its
// results as markers and usually ends with "systemctl poweroff" (orderly) or
// "poweroff -f" (at once). When the script has exited the unit writes the
// marker "unit-exit RESULT STATUS" (unless the guest is already gone): after
// "systemctl poweroff" that is "signal TERM", as the shutdown stops the
// script.
func InstallTestUnit(rootfs, script string) error {
	run := filepath.Join(rootfs, "usr/local/sbin/vmtest-run")
	body := "#!/bin/sh\n# Installed by peerup's vmtest rig.\n" + GuestPreamble + "\n" + strings.TrimPrefix(script, "#!/bin/sh\n")
	if err := os.MkdirAll(filepath.Dir(run), 0o755); err != nil {
		return fmt.Errorf("vmtest: install unit: %w", err)
	}
	if err := os.WriteFile(run, []byte(body), 0o755); err != nil {
		return fmt.Errorf("vmtest: install unit: %w", err)
	}
	unit := filepath.Join(rootfs, "etc/systemd/system/vmtest.service")
	if err := os.WriteFile(unit, []byte(unitFile), 0o644); err != nil {
		return fmt.Errorf("vmtest: install unit: %w", err)
	}
	wants := filepath.Join(rootfs, "etc/systemd/system/multi-user.target.wants")
	if err := os.MkdirAll(wants, 0o755); err != nil {
		return fmt.Errorf("vmtest: install unit: %w", err)
	}
	link := filepath.Join(wants, "vmtest.service")
	os.Remove(link)
	if err := os.Symlink("/etc/systemd/system/vmtest.service", link); err != nil {
		return fmt.Errorf("vmtest: install unit: %w", err)
	}
	return nil
}
