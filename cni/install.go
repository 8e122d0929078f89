package cni

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// DefaultConfName is the conflist Install writes. containerd 1.6 reads
// only the lexically first file of its conf dir (max_conf_num = 1), so it
// sorts early.
const DefaultConfName = "05-meshplane.conflist"

// NetworkName is the network's name in the conflist.
const NetworkName = "meshplane"

// InstallConfig says where to install the plugin and what its conflist
// says.
type InstallConfig struct {
	// BinDir is the runtime's CNI bin dir (containerd's bin_dir); required.
	BinDir string
	// ConfDir is the runtime's CNI conf dir (conf_dir); required.
	ConfDir string
	// ConfName is the conflist's file name; empty means DefaultConfName.
	ConfName string
	// Binary is the plugin binary to copy; empty means this executable.
	Binary string
	// Socket, LogFile and Timeout go into the conflist (NetConf); zero
	// values are left out, so the plugin's defaults apply.
	Socket  string
	LogFile string
	Timeout time.Duration
}

func (c InstallConfig) validate() (InstallConfig, error) {
	if c.BinDir == "" || c.ConfDir == "" {
		return c, fmt.Errorf("%w: pass --bin-dir and --conf-dir (the runtime's CNI bin_dir and conf_dir)", ErrConfig)
	}
	if c.ConfName == "" {
		c.ConfName = DefaultConfName
	}
	if filepath.Base(c.ConfName) != c.ConfName || filepath.Ext(c.ConfName) != ".conflist" {
		return c, fmt.Errorf("%w: conf name %q: a file name ending in .conflist", ErrConfig, c.ConfName)
	}
	for _, p := range []struct{ what, path string }{{"socket", c.Socket}, {"log file", c.LogFile}} {
		if p.path != "" && !filepath.IsAbs(p.path) {
			return c, fmt.Errorf("%w: %s %q: an absolute path", ErrConfig, p.what, p.path)
		}
	}
	if c.Timeout < 0 {
		return c, fmt.Errorf("%w: timeout %s: a positive duration", ErrConfig, c.Timeout)
	}
	return c, nil
}

// Conflist returns the network configuration list Install writes:
// cniVersion 1.0.0, which containerd 1.6's libcni takes, with cniVersions
// naming 1.1.0 too, which newer runtimes pick (and with it GC and
// STATUS). There is no loopback entry: the runtime sets up lo itself.
func (c InstallConfig) Conflist() ([]byte, error) {
	plugin := map[string]any{"type": PluginType}
	if c.Socket != "" {
		plugin["socket"] = c.Socket
	}
	if c.LogFile != "" {
		plugin["logFile"] = c.LogFile
	}
	if c.Timeout > 0 {
		plugin["timeout"] = c.Timeout.String()
	}
	list := map[string]any{
		"cniVersion":  "1.0.0",
		"cniVersions": []string{"1.0.0", "1.1.0"},
		"name":        NetworkName,
		"plugins":     []any{plugin},
	}
	b, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// Install copies the plugin binary into BinDir (atomically: a temporary
// file renamed into place, so the runtime never runs half a binary) and
// writes the conflist into ConfDir in place (written over, cut to
// length, fsync): containerd 1.6 ignores a file moved into its conf dir and
// reloads only on a write. An unchanged conflist is not rewritten.
func Install(c InstallConfig) error {
	c, err := c.validate()
	if err != nil {
		return err
	}
	src := c.Binary
	if src == "" {
		if src, err = os.Executable(); err != nil {
			return fmt.Errorf("install: this executable: %w", err)
		}
	}
	plugin := filepath.Join(c.BinDir, PluginType)
	if err := copyBinary(src, plugin); err != nil {
		return fmt.Errorf("install: %w", err)
	}
	if err := installLoopback(c.BinDir, plugin); err != nil {
		return fmt.Errorf("install: %w", err)
	}
	conf, err := c.Conflist()
	if err != nil {
		return err
	}
	if err := writeInPlace(filepath.Join(c.ConfDir, c.ConfName), conf); err != nil {
		return fmt.Errorf("install: %w", err)
	}
	return nil
}

// Uninstall removes the conflist and the binary, and the loopback plugin
// if Install put it there; missing ones are fine. The conflist goes
// first, so the runtime stops calling the plugin before the binary is
// gone.
func Uninstall(c InstallConfig) error {
	c, err := c.validate()
	if err != nil {
		return err
	}
	var errs []error
	if err := os.Remove(filepath.Join(c.ConfDir, c.ConfName)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("uninstall: %w", err))
	}
	if err := uninstallLoopback(c.BinDir); err != nil {
		errs = append(errs, fmt.Errorf("uninstall: %w", err))
	}
	if err := os.Remove(filepath.Join(c.BinDir, PluginType)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("uninstall: %w", err))
	}
	return errors.Join(errs...)
}

func copyBinary(src, dst string) (err error) {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	if same(src, dst) {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer func() { _ = in.Close() }()
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".*.tmp")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if _, err := io.Copy(tmp, in); err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if err := tmp.Chmod(0o755); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), dst)
}

// same reports whether a and b are the same file.
func same(a, b string) bool {
	sa, err := os.Stat(a)
	if err != nil {
		return false
	}
	sb, err := os.Stat(b)
	return err == nil && os.SameFile(sa, sb)
}

// writeInPlace writes b to path through the file itself, not a rename:
// over the old content from offset 0, then cut to b's length if the old
// was longer. The file is never empty in between, and a new or same-length
// file gets a single write event: containerd 1.6 reloads on each event,
// and after a truncate first it read an empty file and logged "unexpected
// end of JSON input" on every fresh install (seen on a real kubelet,
// e2e/realnode).
func writeInPlace(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, b) {
		return nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(b, 0); err != nil {
		_ = f.Close()
		return err
	}
	st, err := f.Stat()
	if err == nil && st.Size() > int64(len(b)) {
		err = f.Truncate(int64(len(b)))
	}
	if err == nil {
		err = f.Sync()
	}
	if err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}
