package etcdflags_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/meshplane/meshplane/cmd/internal/etcdflags"
	"github.com/meshplane/meshplane/kvstore"
)

func TestEnvName(t *testing.T) {
	for flag, want := range map[string]string{
		"etcd-endpoints":     "MESHPLANE_ETCD_ENDPOINTS",
		"etcd-password-file": "MESHPLANE_ETCD_PASSWORD_FILE",
		"node-name":          "MESHPLANE_NODE_NAME",
	} {
		if got := etcdflags.EnvName(flag); got != want {
			t.Errorf("EnvName(%q) = %q, want %q", flag, got, want)
		}
	}
}

// parse binds a fresh flag set with one flag of the binary's own, parses
// args and applies the environment.
func parse(t *testing.T, args ...string) (kvstore.Config, string, *etcdflags.Flags, error) {
	t.Helper()
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	var cfg kvstore.Config
	ef := etcdflags.Bind(fs, &cfg)
	own := fs.String("cluster-name", "default", "")
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	err := ef.SetFromEnv()
	return cfg, *own, ef, err
}

// TestSources: a flag beats the environment, the environment beats the
// default, and the binary's own flags follow the same rule.
func TestSources(t *testing.T) {
	t.Setenv("MESHPLANE_ETCD_ENDPOINTS", "http://env:2379")
	t.Setenv("MESHPLANE_ETCD_USER", "env-user")
	t.Setenv("MESHPLANE_CLUSTER_NAME", "env-cluster")
	cfg, cluster, _, err := parse(t, "--etcd-endpoints", " http://a:2379, ,http://b:2379 ", "--etcd-dial-timeout", "2s")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cfg.Endpoints, []string{"http://a:2379", "http://b:2379"}) {
		t.Errorf("Endpoints = %q, want the command line's, trimmed", cfg.Endpoints)
	}
	if cfg.Username != "env-user" || cluster != "env-cluster" || cfg.DialTimeout != 2*time.Second {
		t.Errorf("user %q, cluster %q, dial timeout %s; want env-user, env-cluster, 2s", cfg.Username, cluster, cfg.DialTimeout)
	}
	cfg, _, _, err = parse(t)
	if err != nil || !slices.Equal(cfg.Endpoints, []string{"http://env:2379"}) || cfg.DialTimeout != kvstore.DefaultDialTimeout {
		t.Errorf("from the environment: Endpoints %q, dial timeout %s, %v", cfg.Endpoints, cfg.DialTimeout, err)
	}
}

func TestPasswordSources(t *testing.T) {
	file := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(file, []byte("pw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name               string
		args               []string
		envPassword        string
		envFile            bool
		password, pwFile   string
		commandLineWarning bool
	}{
		{"environment", nil, "env-pw", false, "env-pw", "", false},
		{"flag beats environment", []string{"--etcd-password", "flag-pw"}, "env-pw", false, "flag-pw", "", true},
		{"file flag beats environment password", []string{"--etcd-password-file", file}, "env-pw", false, "", file, false},
		{"file from environment beats environment password", nil, "env-pw", true, "", file, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("MESHPLANE_ETCD_PASSWORD", tt.envPassword)
			if tt.envFile {
				t.Setenv("MESHPLANE_ETCD_PASSWORD_FILE", file)
			}
			cfg, _, ef, err := parse(t, tt.args...)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Password != tt.password || cfg.PasswordFile != tt.pwFile {
				t.Errorf("password %q, file %q; want %q, %q", cfg.Password, cfg.PasswordFile, tt.password, tt.pwFile)
			}
			ws := ef.Warnings()
			if got := len(ws) == 1 && strings.Contains(ws[0].String(), "--etcd-password on the command line"); got != tt.commandLineWarning {
				t.Errorf("warnings %v, want a command line warning: %v", ws, tt.commandLineWarning)
			}
			for _, w := range ws {
				if strings.Contains(w.String(), tt.password) && tt.password != "" {
					t.Errorf("warning %q shows the password", w)
				}
			}
		})
	}
}

func TestPasswordFileWarning(t *testing.T) {
	dir := t.TempDir()
	open, private := filepath.Join(dir, "open"), filepath.Join(dir, "private")
	if err := os.WriteFile(open, []byte("pw\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(private, []byte("pw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, ef, _ := parse(t, "--etcd-password-file", open)
	if ws := ef.Warnings(); len(ws) != 1 || !strings.Contains(ws[0].String(), "is readable by other users") || !strings.Contains(ws[0].String(), "chmod 600 "+open) {
		t.Errorf("open file: warnings %v", ws)
	}
	_, _, ef, _ = parse(t, "--etcd-password-file", private)
	if ws := ef.Warnings(); len(ws) != 0 {
		t.Errorf("private file: warnings %v, want none", ws)
	}
}

func TestEnvErrors(t *testing.T) {
	t.Setenv("MESHPLANE_ETCD_DIAL_TIMEOUT", "soon")
	_, _, _, err := parse(t)
	if err == nil || !strings.Contains(err.Error(), `MESHPLANE_ETCD_DIAL_TIMEOUT="soon"`) {
		t.Fatalf("SetFromEnv() = %v, want an error naming the variable", err)
	}
	// A flag on the command line is not read from the environment.
	if _, _, _, err := parse(t, "--etcd-dial-timeout", "1s"); err != nil {
		t.Fatalf("SetFromEnv() with the flag given = %v", err)
	}
}

// TestHelpShowsEnv: every etcd flag's usage names its variable, and the
// password's default is never the environment's.
func TestHelpShowsEnv(t *testing.T) {
	t.Setenv("MESHPLANE_ETCD_PASSWORD", "s3cret")
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	var cfg kvstore.Config
	etcdflags.Bind(fs, &cfg)
	fs.VisitAll(func(f *pflag.Flag) {
		if !strings.Contains(f.Usage, etcdflags.EnvName(f.Name)) {
			t.Errorf("--%s usage %q does not name %s", f.Name, f.Usage, etcdflags.EnvName(f.Name))
		}
	})
	if strings.Contains(fs.FlagUsages(), "s3cret") {
		t.Error("help shows the password")
	}
}
