// Package configfile reads a daemon's YAML config file, whose keys are the
// names of its flags, into the flag set: one contract for mesh-agent and
// mesh-controlplane (the ConfigMap of a deployment is such a file).
//
// Precedence: the command line, then the environment (MESHPLANE_<FLAG>),
// then the file, then the flag's default.
package configfile

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"

	"github.com/meshplane/meshplane/cmd/internal/etcdflags"
)

// Apply sets the flags the file at path names that neither the command
// line nor the environment set. A key that names no flag of fs (or names
// the config flag itself) is an error that points to program --help.
// Lists become comma-separated values, maps k=v pairs, whole numbers stay
// whole.
func Apply(fs *pflag.FlagSet, path, program string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	var m map[string]any
	if err := yaml.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	for k, v := range m {
		fl := fs.Lookup(k)
		if fl == nil || k == "config" {
			return fmt.Errorf("config file %s: unknown key %q: keys are the flag names (see %s --help)", path, k, program)
		}
		if fl.Changed {
			continue
		}
		if _, env := os.LookupEnv(etcdflags.EnvName(k)); env {
			continue
		}
		if err := fs.Set(k, value(v)); err != nil {
			return fmt.Errorf("config file %s: %s: %w", path, k, err)
		}
	}
	return nil
}

// value is v as a flag value.
func value(v any) string {
	switch v := v.(type) {
	case []any:
		parts := make([]string, len(v))
		for i, p := range v {
			parts[i] = fmt.Sprint(p)
		}
		return strings.Join(parts, ",")
	case map[string]any:
		parts := make([]string, 0, len(v))
		for mk, mv := range v {
			parts = append(parts, fmt.Sprintf("%s=%v", mk, mv))
		}
		return strings.Join(parts, ",")
	case float64:
		// YAML numbers arrive as float64; 1000000 must not become 1e+06.
		if float64(int64(v)) == v {
			return fmt.Sprint(int64(v))
		}
		return fmt.Sprint(v)
	default:
		return fmt.Sprint(v)
	}
}
