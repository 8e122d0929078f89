// Package image writes container images as docker-archive tarballs (the
// format of `docker save`), which `ctr images import` loads into
// containerd: images for a node that reaches no registry. It is stdlib
// only and does not import testing, so tests, harnesses and commands may
// all use it.
//
// An image is one layer: the files of a Spec, each copied from the local
// disk, with the directories they need. The config sets the Entrypoint,
// Cmd and Env, for linux/amd64 (runtime.GOARCH).
package image

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"
)

// Spec is one image.
type Spec struct {
	// Name is the image's reference, e.g. meshplane.local/meshplane:dev.
	// Required.
	Name string
	// Files maps a path in the image (absolute, e.g. /usr/local/bin/meshctl)
	// to the local file copied there, with its mode. At least one.
	Files map[string]string
	// Entrypoint and Cmd are the image's; empty means none.
	Entrypoint []string
	Cmd        []string
	// Env is the image's environment; nil means PATH with
	// /usr/local/bin, /usr/bin, /bin and /.
	Env []string
}

// ErrSpec is wrapped by the errors about a bad Spec.
var ErrSpec = errors.New("image: bad spec")

// epoch is every file's time, so that the same files make the same image.
var epoch = time.Unix(0, 0).UTC()

// Write writes s as a docker-archive tarball to w.
func Write(w io.Writer, s Spec) error {
	if s.Name == "" || !strings.Contains(s.Name, ":") {
		return fmt.Errorf("%w: name %q: give a reference with a tag, e.g. meshplane.local/probe:dev", ErrSpec, s.Name)
	}
	if len(s.Files) == 0 {
		return fmt.Errorf("%w: %s has no files", ErrSpec, s.Name)
	}
	layer, err := layerTar(s.Files)
	if err != nil {
		return fmt.Errorf("image %s: %w", s.Name, err)
	}
	diff := sha256.Sum256(layer)
	env := s.Env
	if env == nil {
		env = []string{"PATH=/usr/local/bin:/usr/bin:/bin:/"}
	}
	config, err := json.Marshal(map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"created":      epoch.Format(time.RFC3339),
		"config":       map[string]any{"Entrypoint": s.Entrypoint, "Cmd": s.Cmd, "Env": env},
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{"sha256:" + hex.EncodeToString(diff[:])}},
	})
	if err != nil {
		return err
	}
	cs := sha256.Sum256(config)
	configName := hex.EncodeToString(cs[:]) + ".json"
	layerName := hex.EncodeToString(diff[:]) + "/layer.tar"
	manifest, err := json.Marshal([]map[string]any{{
		"Config": configName, "RepoTags": []string{s.Name}, "Layers": []string{layerName},
	}})
	if err != nil {
		return err
	}
	tw := tar.NewWriter(w)
	for _, f := range []struct {
		name string
		data []byte
	}{{configName, config}, {layerName, layer}, {"manifest.json", manifest}} {
		if dir := path.Dir(f.name); dir != "." {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir + "/", Mode: 0o755, ModTime: epoch}); err != nil {
				return err
			}
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: 0o644, Size: int64(len(f.data)), ModTime: epoch}); err != nil {
			return err
		}
		if _, err := tw.Write(f.data); err != nil {
			return err
		}
	}
	return tw.Close()
}

// WriteFile writes s as a docker-archive tarball at path.
func WriteFile(path string, s Spec) error {
	var b bytes.Buffer
	if err := Write(&b, s); err != nil {
		return err
	}
	return os.WriteFile(path, b.Bytes(), 0o644)
}

// layerTar is the one layer: files (image path -> local path), each
// directory on the way, and /tmp.
func layerTar(files map[string]string) ([]byte, error) {
	dirs := map[string]bool{"tmp": true}
	var names []string
	for p := range files {
		clean := strings.TrimPrefix(path.Clean("/"+p), "/")
		if !strings.HasPrefix(p, "/") || clean == "" || clean != p[1:] {
			return nil, fmt.Errorf("%w: path %q in the image: give a clean absolute path, e.g. /usr/local/bin/x", ErrSpec, p)
		}
		names = append(names, clean)
		for d := path.Dir(clean); d != "."; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	sort.Strings(names)
	var ds []string
	for d := range dirs {
		ds = append(ds, d)
	}
	sort.Strings(ds)
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, d := range ds {
		mode := int64(0o755)
		if d == "tmp" {
			mode = 0o1777
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: mode, ModTime: epoch}); err != nil {
			return nil, err
		}
	}
	for _, n := range names {
		src := files["/"+n]
		data, err := os.ReadFile(src)
		if err != nil {
			return nil, err
		}
		fi, err := os.Stat(src)
		if err != nil {
			return nil, err
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: n, Mode: int64(fi.Mode().Perm()), Size: int64(len(data)), ModTime: epoch}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// MeshplaneName is the image the manifests in deploy/ run.
const MeshplaneName = "meshplane.local/meshplane:dev"

// MeshplaneBinaries are the binaries of the meshplane image, each at
// /usr/local/bin/<name>.
var MeshplaneBinaries = []string{"mesh-agent", "mesh-controlplane", "mesh-cni", "meshctl"}

// Meshplane is the spec of the meshplane image (MeshplaneName) from the
// binaries in binDir (`make build` puts them in bin/): each of
// MeshplaneBinaries at /usr/local/bin. They must be static
// (CGO_ENABLED=0): the image has no libc. A missing binary is an error.
func Meshplane(binDir string) (Spec, error) {
	s := Spec{Name: MeshplaneName, Files: map[string]string{}}
	for _, b := range MeshplaneBinaries {
		p := filepath.Join(binDir, b)
		if _, err := os.Stat(p); err != nil {
			return Spec{}, fmt.Errorf("%w: meshplane image: %w; run `make build` (CGO_ENABLED=0) first", ErrSpec, err)
		}
		s.Files["/usr/local/bin/"+b] = p
	}
	return s, nil
}
