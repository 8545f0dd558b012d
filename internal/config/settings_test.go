package config

import (
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

var update = flag.Bool("update", false, "rewrite docs/configuration.md from Settings")

// docs/configuration.md is what Reference makes of Settings: a setting
// added, renamed or re-documented without `go generate ./internal/config`
// fails here.
func TestConfigurationDoc(t *testing.T) {
	path := filepath.Join("..", "..", "docs", "configuration.md")
	want := Reference()
	if *update {
		if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Errorf("%s differs from Settings: run `go generate ./internal/config`", path)
	}
}

// Every row of the table is usable: one flag per name, a default its flag
// type parses, a config-file place that exists in File, a group that some
// command adds.
func TestSettingsTable(t *testing.T) {
	seen := map[string]bool{}
	for _, s := range Settings {
		if seen[s.Flag] {
			t.Errorf("--%s declared twice", s.Flag)
		}
		seen[s.Flag] = true
		if s.Help == "" || s.bind == nil {
			t.Errorf("--%s: no help or no field", s.Flag)
		}
		if _, ok := groupCommands[s.Group]; !ok {
			t.Errorf("--%s: group %q is no command's", s.Flag, s.Group)
		}
		fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
		s.bind(&Config{}, fs, s)
		f := fs.Lookup(s.Flag)
		if s.Default != "" && !strings.Contains(f.DefValue, s.Default) {
			t.Errorf("--%s: default %q became %q", s.Flag, s.Default, f.DefValue)
		}
		for _, p := range strings.Split(s.File, ", ") {
			if p != "" && !hasPath(reflect.TypeFor[File](), strings.Split(p, ".")) {
				t.Errorf("--%s: the config file has no %s", s.Flag, p)
			}
		}
	}
	// Every setting reaches `gpulet run` or a command of its own.
	var c Config
	fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
	c.RunFlags(fs)
	c.addFlags(fs, groupLabelsFile)
	for _, s := range Settings {
		if fs.Lookup(s.Flag) == nil {
			t.Errorf("--%s is in no command", s.Flag)
		}
	}
}

// hasPath reports whether t has the JSON field path.
func hasPath(t reflect.Type, path []string) bool {
	for len(path) > 0 {
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		if t.Kind() == reflect.Map {
			return len(path) == 0
		}
		if t.Kind() != reflect.Struct {
			return false
		}
		found := false
		for f := range t.Fields() {
			if name, _, _ := strings.Cut(f.Tag.Get("json"), ","); name == path[0] {
				t, path, found = f.Type, path[1:], true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}
