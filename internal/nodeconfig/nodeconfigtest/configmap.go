// Package nodeconfigtest lays out a folder as the kubelet mounts a
// ConfigMap, for tests of per-node configuration.
package nodeconfigtest

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// ConfigMap is a folder laid out as the kubelet mounts a ConfigMap volume:
// the files in a timestamped folder, ..data a symlink to it, each key a
// symlink through ..data.
type ConfigMap struct {
	t   testing.TB
	Dir string
	gen int
}

// New mounts files in dir.
func New(t testing.TB, dir string, files map[string]string) *ConfigMap {
	t.Helper()
	c := &ConfigMap{t: t, Dir: dir}
	c.Update(files)
	return c
}

// Update replaces the contents the kubelet's way: a new timestamped folder,
// ..data swapped to it by a rename, key links added for new keys and
// removed for gone ones, the old folder removed.
func (c *ConfigMap) Update(files map[string]string) {
	t := c.t
	t.Helper()
	c.gen++
	ts := filepath.Join(c.Dir, fmt.Sprintf("..2026_12_02_00_00_%02d.%d", c.gen, c.gen))
	if err := os.Mkdir(ts, 0o755); err != nil {
		t.Fatal(err)
	}
	for k, v := range files {
		if err := os.WriteFile(filepath.Join(ts, k), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	data := filepath.Join(c.Dir, "..data")
	old, _ := os.Readlink(data)
	tmp := filepath.Join(c.Dir, "..data_tmp")
	if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, data); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(c.Dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if _, keep := files[e.Name()]; !keep && e.Type()&os.ModeSymlink != 0 && e.Name()[0] != '.' {
			os.Remove(filepath.Join(c.Dir, e.Name()))
		}
	}
	for k := range files {
		link := filepath.Join(c.Dir, k)
		if _, err := os.Lstat(link); err == nil {
			continue
		}
		if err := os.Symlink(filepath.Join("..data", k), link); err != nil {
			t.Fatal(err)
		}
	}
	if old != "" {
		os.RemoveAll(filepath.Join(c.Dir, old))
	}
}
