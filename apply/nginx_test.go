package apply_test

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// startNginx serves dir statically on 127.0.0.1 with a real nginx and
// returns its URL.
func startNginx(t *testing.T, dir string) string {
	t.Helper()
	bin, err := exec.LookPath("nginx")
	if err != nil {
		if _, err2 := os.Stat("/usr/sbin/nginx"); err2 != nil {
			t.Skip("nginx not installed (apt-get install nginx-light); skipping the static-repo test")
		}
		bin = "/usr/sbin/nginx"
	}
	if os.Getuid() != 0 {
		t.Skip("nginx test runs as root (nginx writes its pid and temp files)")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	work := t.TempDir()
	conf := filepath.Join(work, "nginx.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf(`
user root;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events { worker_connections 64; }
http {
	access_log off;
	client_body_temp_path %[1]s/body;
	proxy_temp_path %[1]s/proxy;
	fastcgi_temp_path %[1]s/fastcgi;
	uwsgi_temp_path %[1]s/uwsgi;
	scgi_temp_path %[1]s/scgi;
	server {
		listen %[2]s;
		root %[3]s;
	}
}
`, work, addr, dir)), 0o644)
	cmd := exec.Command(bin, "-c", conf, "-g", "daemon off;")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// SIGTERM, not SIGKILL: the master must live to stop its workers.
	t.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() })
	url := "http://" + addr + "/"
	// Wait until nginx answers, bounded; the port is ours alone.
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(url + "peerup-repo")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return url
			}
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(work, "error.log"))
			t.Fatalf("nginx did not serve the repo: %v\n%s", err, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestPullFromNginxStaticRepo(t *testing.T) {
	f := newFleet(t)
	tree := makeTree(t, "VERSION=1\n")
	f.publish(tree, 1)
	write(t, tree+"/etc/os-release", "VERSION=2\n", 0o644)
	f.publish(tree, 2)
	f.url = startNginx(t, f.repo.Dir())
	s := newSysroot(t)
	f.update(s, 1)
	f.update(s, 0)
	st, err := s.Status()
	if err != nil || st.Current != 2 || st.Previous != 1 {
		t.Fatalf("status %+v, %v", st, err)
	}
	compareTrees(t, tree, filepath.Join(s.Dir(), "current")+"/")
}
