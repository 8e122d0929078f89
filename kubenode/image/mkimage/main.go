// Command mkimage writes a one-layer docker-archive image (package
// kubenode/image) for `ctr -n k8s.io images import`, on a node that
// reaches no registry.
//
//	mkimage -o meshplane.tar -meshplane bin/
//	    the manifests' image, meshplane.local/meshplane:dev, with
//	    bin/{mesh-agent,mesh-controlplane,mesh-cni,meshctl} in
//	    /usr/local/bin (build them with CGO_ENABLED=0: the image has no libc)
//	mkimage -o x.tar -name meshplane.local/x:dev -entrypoint /x [-cmd ARG]... SRC:DST...
//	    any image: each local file SRC at DST in the image
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/meshplane/meshplane/kubenode/image"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, " ") }
func (l *list) Set(s string) error { *l = append(*l, s); return nil }

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(2)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("mkimage", flag.ContinueOnError)
	out := fs.String("o", "", "the tarball to write (required)")
	meshplane := fs.String("meshplane", "", "write the meshplane image from the binaries in this directory")
	name := fs.String("name", "", "the image's reference, with a tag")
	var entrypoint, cmd list
	fs.Var(&entrypoint, "entrypoint", "the entrypoint (repeat for arguments)")
	fs.Var(&cmd, "cmd", "the command's arguments (repeat)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" {
		return errors.New("no output: give -o FILE.tar")
	}
	var spec image.Spec
	if *meshplane != "" {
		var err error
		if spec, err = image.Meshplane(*meshplane); err != nil {
			return err
		}
	} else {
		spec = image.Spec{Name: *name, Entrypoint: entrypoint, Cmd: cmd, Files: map[string]string{}}
		for _, f := range fs.Args() {
			src, dst, ok := strings.Cut(f, ":")
			if !ok || src == "" || dst == "" {
				return fmt.Errorf("file %q: give SRC:DST, e.g. bin/probe:/probe", f)
			}
			spec.Files[dst] = src
		}
	}
	return image.WriteFile(*out, spec)
}
