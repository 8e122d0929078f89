package kubenode

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/meshplane/meshplane/kubenode/image"
)

// probePackage is the test workload's source (kubenode/internal/probe).
const probePackage = "github.com/meshplane/meshplane/kubenode/internal/probe"

// buildProbe builds the static probe binary into dir (from this
// module's source: the test runs inside it).
func buildProbe(ctx context.Context, dir string) (string, error) {
	out := filepath.Join(dir, "probe")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, probePackage)
	if _, file, _, ok := runtime.Caller(0); ok {
		cmd.Dir = filepath.Dir(file)
	}
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build the probe: %w: %s", err, strings.TrimSpace(string(b)))
	}
	return out, nil
}

// ImportSpec writes s as a docker-archive image (package image) in the
// node's directory and imports it, e.g. the manifests' meshplane image:
//
//	s, err := image.Meshplane("../bin") // CGO_ENABLED=0 make build
//	...
//	err = n.ImportSpec(ctx, s)
func (n *Node) ImportSpec(ctx context.Context, s image.Spec) error {
	tar := filepath.Join(n.dirs.images, strings.NewReplacer("/", "_", ":", "_").Replace(s.Name)+".tar")
	if err := image.WriteFile(tar, s); err != nil {
		return err
	}
	return n.ImportImage(ctx, tar)
}

// importImages builds the probe and imports the pause and probe images.
func (n *Node) importImages(ctx context.Context) error {
	probe, err := buildProbe(ctx, n.dirs.images)
	if err != nil {
		return err
	}
	n.ProbeBinary = probe
	for _, s := range []image.Spec{
		{Name: PauseImage, Files: map[string]string{"/pause": probe}, Entrypoint: []string{"/pause"}},
		{Name: ProbeImage, Files: map[string]string{"/probe": probe}, Entrypoint: []string{"/probe"}, Cmd: []string{"serve"}},
	} {
		if err := n.ImportSpec(ctx, s); err != nil {
			return err
		}
	}
	return nil
}
