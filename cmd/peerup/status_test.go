package main

import (
	"bytes"
	"encoding/json"
	"maps"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/peerup/peerup/internal/testbus"
)

// TestStatusJSONIsOneSchema: `status --json` from the sysroot and from a
// running daemon over D-Bus parse with the same schema, key for key.
func TestStatusJSONIsOneSchema(t *testing.T) {
	addr := testbus.Private(t)
	bin := buildPeerup(t)
	dir := t.TempDir()
	run, must := cli(t, bin)
	must("keygen", "--name", "fleet", "--out", dir+"/keys")
	tree, repo, sysroot := dir+"/tree", dir+"/repo", dir+"/laptop"
	for _, v := range []string{"1", "2"} {
		os.MkdirAll(tree+"/etc", 0o755)
		os.WriteFile(tree+"/etc/os-release", []byte("VERSION_ID="+v+"\n"), 0o644)
		must("publish", "--repo", repo, "--image", "school-laptop", "--key", dir+"/keys/fleet.key", "--label", "Term "+v, tree)
		if v == "1" {
			must("update", "--sysroot", sysroot, "--trust", dir+"/keys/fleet.pub", "--from", repo)
		}
	}
	d := exec.Command(bin, "daemon", "--sysroot", sysroot, "--trust", dir+"/keys/fleet.pub", "--peer", repo, "--policy", "notify",
		"--bus", addr, "--no-mdns", "--no-multicast", "--listen", "127.0.0.1:0")
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Process.Kill(); d.Wait() })

	decode := func(out string) (statusDoc, []string) {
		t.Helper()
		var doc statusDoc
		dec := json.NewDecoder(strings.NewReader(out))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&doc); err != nil {
			t.Fatalf("status --json does not parse as the schema: %v\n%s", err, out)
		}
		var keys map[string]any
		json.Unmarshal([]byte(out), &keys)
		return doc, slices.Sorted(maps.Keys(keys))
	}
	var bus statusDoc
	var busKeys []string
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := run("status", "--bus", addr, "--json")
		if err == nil {
			if bus, busKeys = decode(out); bus.State != nil && *bus.State == "update-available" {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the daemon never offered v2: %v\n%s", err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	var stdout bytes.Buffer
	c := exec.Command(bin, "status", "--sysroot", sysroot, "--json")
	c.Stdout = &stdout
	if err := c.Run(); err != nil {
		t.Fatal(err)
	}
	local, localKeys := decode(stdout.String())
	if !slices.Equal(busKeys, localKeys) {
		t.Errorf("keys differ:\nD-Bus   %v\nsysroot %v", busKeys, localKeys)
	}
	if *bus.Current != 1 || *local.Current != 1 || *bus.Image != "school-laptop" || *local.Image != "school-laptop" {
		t.Errorf("the two answers disagree on what runs: %+v vs %+v", bus, local)
	}
	if *bus.Available != 2 || bus.UpdateLabel == nil || *bus.UpdateLabel != "Term 2" || bus.DownloadSize == nil || *bus.DownloadSize == 0 {
		t.Errorf("the daemon's offer: %+v", bus)
	}
	if local.State != nil || local.Available != nil {
		t.Errorf("the sysroot claims a daemon's state: %+v", local)
	}
}
