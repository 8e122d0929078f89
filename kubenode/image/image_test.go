package image_test

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/meshplane/meshplane/kubenode/image"
)

// readTar returns the regular files of a tarball by name.
func readTar(t *testing.T, b []byte) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			data, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			files[h.Name] = data
		}
	}
}

// TestWrite checks the docker-archive layout that `ctr images import`
// reads (kubenode's tests import it into a real containerd): a manifest
// naming the config and the layer, a config whose diff ID is the layer's
// digest, and the files in the layer with their modes.
func TestWrite(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "tool")
	if err := os.WriteFile(bin, []byte("#!/bin/true\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	err := image.Write(&b, image.Spec{
		Name: "meshplane.local/x:dev", Files: map[string]string{"/usr/local/bin/tool": bin},
		Entrypoint: []string{"/usr/local/bin/tool"}, Cmd: []string{"serve"},
	})
	if err != nil {
		t.Fatal(err)
	}
	files := readTar(t, b.Bytes())
	var manifest []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	if err := json.Unmarshal(files["manifest.json"], &manifest); err != nil {
		t.Fatal(err)
	}
	if len(manifest) != 1 || len(manifest[0].RepoTags) != 1 || manifest[0].RepoTags[0] != "meshplane.local/x:dev" || len(manifest[0].Layers) != 1 {
		t.Fatalf("manifest = %+v", manifest)
	}
	var config struct {
		OS     string
		Config struct{ Entrypoint, Cmd, Env []string }
		RootFS struct {
			DiffIDs []string `json:"diff_ids"`
		}
	}
	if err := json.Unmarshal(files[manifest[0].Config], &config); err != nil {
		t.Fatal(err)
	}
	layer := files[manifest[0].Layers[0]]
	sum := sha256.Sum256(layer)
	if len(config.RootFS.DiffIDs) != 1 || config.RootFS.DiffIDs[0] != "sha256:"+hex.EncodeToString(sum[:]) {
		t.Errorf("diff IDs %q; the layer's digest is %x", config.RootFS.DiffIDs, sum)
	}
	if config.OS != "linux" || len(config.Config.Entrypoint) != 1 || config.Config.Cmd[0] != "serve" || len(config.Config.Env) != 1 {
		t.Errorf("config = %+v", config)
	}
	tr := tar.NewReader(bytes.NewReader(layer))
	seen := map[string]int64{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		seen[h.Name] = h.Mode
	}
	for name, mode := range map[string]int64{"usr/": 0o755, "usr/local/bin/": 0o755, "tmp/": 0o1777, "usr/local/bin/tool": 0o755} {
		if m, ok := seen[name]; !ok || m != mode {
			t.Errorf("layer entry %s: mode %o, present %v; want %o (entries %v)", name, m, ok, mode, seen)
		}
	}

	// The same files make the same image.
	var again bytes.Buffer
	_ = image.Write(&again, image.Spec{
		Name: "meshplane.local/x:dev", Files: map[string]string{"/usr/local/bin/tool": bin},
		Entrypoint: []string{"/usr/local/bin/tool"}, Cmd: []string{"serve"},
	})
	if !bytes.Equal(again.Bytes(), b.Bytes()) {
		t.Error("two writes of one spec differ")
	}
}

func TestWriteBadSpec(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "tool")
	if err := os.WriteFile(bin, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, s := range map[string]image.Spec{
		"no tag":      {Name: "x", Files: map[string]string{"/x": bin}},
		"no files":    {Name: "x:1"},
		"unclean":     {Name: "x:1", Files: map[string]string{"/a/../x": bin}},
		"relative":    {Name: "x:1", Files: map[string]string{"x": bin}},
		"root itself": {Name: "x:1", Files: map[string]string{"/": bin}},
	} {
		if err := image.Write(io.Discard, s); !errors.Is(err, image.ErrSpec) {
			t.Errorf("%s: Write = %v, want ErrSpec", name, err)
		}
	}
}

func TestMeshplane(t *testing.T) {
	dir := t.TempDir()
	if _, err := image.Meshplane(dir); !errors.Is(err, image.ErrSpec) {
		t.Fatalf("Meshplane(empty dir) = %v, want ErrSpec", err)
	}
	for _, b := range image.MeshplaneBinaries {
		if err := os.WriteFile(filepath.Join(dir, b), []byte(b), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	s, err := image.Meshplane(dir)
	if err != nil {
		t.Fatal(err)
	}
	if s.Name != image.MeshplaneName || len(s.Files) != len(image.MeshplaneBinaries) || s.Files["/usr/local/bin/mesh-cni"] != filepath.Join(dir, "mesh-cni") {
		t.Fatalf("spec = %+v", s)
	}
	if err := image.WriteFile(filepath.Join(dir, "img.tar"), s); err != nil {
		t.Fatal(err)
	}
}
