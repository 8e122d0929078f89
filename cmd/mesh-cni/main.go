// Command mesh-cni is meshplane's CNI plugin, and its installer.
//
// With CNI_COMMAND set (the container runtime calling it) it is the
// plugin: ADD, DEL, CHECK, GC, STATUS and VERSION, through package cni.
// Otherwise it takes a subcommand:
//
//	mesh-cni install --bin-dir DIR --conf-dir DIR [--conf-name NAME] [--socket PATH] [--log-file PATH] [--timeout D]
//	mesh-cni uninstall --bin-dir DIR --conf-dir DIR [--conf-name NAME]
//	mesh-cni version
//
// See docs/cni.md.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/meshplane/meshplane/cni"
)

func main() {
	if os.Getenv("CNI_COMMAND") != "" {
		// One command and out, exec'd for every pod: a garbage
		// collection would cost more than the memory it frees (the
		// limit is the backstop).
		debug.SetGCPercent(-1)
		debug.SetMemoryLimit(128 << 20)
		// The runtime runs a plugin by its type's name: installed as
		// loopback too, mesh-cni is the sandbox's loopback plugin.
		if filepath.Base(os.Args[0]) == cni.LoopbackType {
			skel.PluginMainFuncs(cni.WithNetnsCheck(cni.LoopbackFuncs()), cni.Versions, cni.AboutLoopback)
			return
		}
		skel.PluginMainFuncs(cni.WithNetnsCheck(logged(cni.Funcs())), cni.Versions, cni.About)
		return
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// logged wraps each command so that it writes a line to the network
// configuration's logFile, if it names one.
func logged(f skel.CNIFuncs) skel.CNIFuncs {
	wrap := func(cmd string, fn func(*skel.CmdArgs) error) func(*skel.CmdArgs) error {
		return func(args *skel.CmdArgs) error {
			start := time.Now()
			err := fn(args)
			conf, cerr := cni.ParseConf(args.StdinData)
			if cerr != nil || conf.LogFile == "" {
				return err
			}
			lf, ferr := os.OpenFile(conf.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
			if ferr != nil {
				return err // the command's outcome matters more than its log
			}
			defer func() { _ = lf.Close() }()
			log := slog.New(slog.NewJSONHandler(lf, nil))
			attrs := []any{"command", cmd, "container", args.ContainerID, "ifname", args.IfName, "netns", args.Netns,
				"args", args.Args, "duration_ms", float64(time.Since(start).Microseconds()) / 1000}
			if err != nil {
				log.Error("CNI command failed", append(attrs, "err", err)...)
			} else {
				log.Info("CNI command done", attrs...)
			}
			return err
		}
	}
	return skel.CNIFuncs{
		Add: wrap("ADD", f.Add), Del: wrap("DEL", f.Del), Check: wrap("CHECK", f.Check),
		GC: wrap("GC", f.GC), Status: wrap("STATUS", f.Status),
	}
}

const usage = `usage:
  mesh-cni install --bin-dir DIR --conf-dir DIR [--conf-name NAME] [--socket PATH] [--log-file PATH] [--timeout D]
  mesh-cni uninstall --bin-dir DIR --conf-dir DIR [--conf-name NAME]
  mesh-cni version
With CNI_COMMAND set, mesh-cni is the CNI plugin (see docs/cni.md).`

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, usage)
		return 2
	}
	switch args[0] {
	case "version":
		fmt.Fprintf(stdout, "mesh-cni: CNI spec %v\n", cni.Versions.SupportedVersions())
		return 0
	case "install", "uninstall":
	case "-h", "--help", "help":
		fmt.Fprintln(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "mesh-cni: unknown command %q\n%s\n", args[0], usage)
		return 2
	}
	var c cni.InstallConfig
	fs := flag.NewFlagSet("mesh-cni "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.BinDir, "bin-dir", "", "the runtime's CNI bin dir (containerd's bin_dir), e.g. /opt/cni/bin")
	fs.StringVar(&c.ConfDir, "conf-dir", "", "the runtime's CNI conf dir (containerd's conf_dir), e.g. /etc/cni/net.d")
	fs.StringVar(&c.ConfName, "conf-name", cni.DefaultConfName, "the conflist's file name")
	if args[0] == "install" {
		fs.StringVar(&c.Socket, "socket", "", "mesh-agent's API socket (default "+cni.DefaultSocket+")")
		fs.StringVar(&c.LogFile, "log-file", "", "a file the plugin logs each command to (default: none)")
		fs.DurationVar(&c.Timeout, "timeout", 0, fmt.Sprintf("bound of each command (default %s; keep it above the agent's --pod-metadata-wait)", cni.DefaultTimeout))
	}
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "mesh-cni %s: unexpected argument %q\n", args[0], fs.Arg(0))
		return 2
	}
	var err error
	if args[0] == "install" {
		err = cni.Install(c)
	} else {
		err = cni.Uninstall(c)
	}
	if err != nil {
		fmt.Fprintln(stderr, "mesh-cni:", err)
		return 1
	}
	return 0
}
