package cli

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/meshplane/meshplane/api"
)

func newObserveCmd(*options) *cobra.Command {
	var (
		f      agentFlags
		req    api.ObserveRequest
		follow bool
		last   uint32
	)
	cmd := &cobra.Command{
		Use:   "observe",
		Short: "Follow the datapath's flows on this node: new connections and drops, with verdicts",
		Long: `observe prints the flows of the local agent's datapath, like Hubble: each
new connection it forwarded and each packet it dropped, with the drop reason,
the identities and the pods. Packets of established connections are counted
in the agent's metrics (meshplane_datapath_packets_total), not listed.

By default it prints the last 20 flows and follows new ones until
interrupted; --follow=false stops after the history. -o json prints one JSON
object per line.`,
		Example: `  meshctl observe --verdict dropped
  meshctl observe --pod prod/web-1 --last 100 --follow=false -o json`,
		Args: cobra.NoArgs,
		PreRunE: func(*cobra.Command, []string) error {
			switch req.Verdict {
			case "", "forwarded", "dropped":
			default:
				return fmt.Errorf("--verdict %q: use forwarded or dropped", req.Verdict)
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(f.format); err != nil {
				return err
			}
			req.Last, req.Follow = last, follow
			client, closeFn, err := dialAgent(cmd.Context(), f)
			if err != nil {
				return err
			}
			defer closeFn()
			stream, err := client.Observe(cmd.Context(), &req)
			if err != nil {
				return agentErr(f.socket, err)
			}
			out := cmd.OutOrStdout()
			if f.format != "json" {
				fmt.Fprintf(out, "%-15s %-8s %-9s %-7s %-5s %-32s %-32s %s\n", "TIME", "NODE", "VERDICT", "DIR", "PROTO", "SOURCE", "DESTINATION", "REASON / SERVICE / FLAGS")
			}
			for {
				fl, err := stream.Recv()
				if errors.Is(err, io.EOF) || cmd.Context().Err() != nil {
					return nil
				}
				if status.Code(err) == codes.Canceled {
					return nil
				}
				if err != nil {
					return agentErr(f.socket, err)
				}
				if err := printFlow(out, f.format, fl); err != nil {
					return err
				}
			}
		},
	}
	addAgentFlags(cmd, &f)
	cmd.Flags().StringVar(&req.Pod, "pod", "", `only flows from or to this pod ("namespace/name" or "name")`)
	cmd.Flags().StringVar(&req.Verdict, "verdict", "", "only forwarded or dropped flows")
	cmd.Flags().StringVar(&req.Ip, "ip", "", "only flows from or to this address")
	cmd.Flags().Uint32Var(&last, "last", 20, "recent flows to print first (the agent keeps 4096)")
	cmd.Flags().BoolVar(&follow, "follow", true, "keep printing new flows")
	return cmd
}

var flowJSON = protojson.MarshalOptions{UseProtoNames: true}

func printFlow(w io.Writer, format string, fl *api.Flow) error {
	if format == "json" {
		b, err := flowJSON.Marshal(fl)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(w, string(b))
		return err
	}
	endpoint := func(addr string, port uint32, pod string, id uint32) string {
		s := addr
		if port != 0 {
			s += ":" + strconv.Itoa(int(port))
		}
		if pod != "" {
			s += " (" + pod + ")"
		}
		return s + " id=" + strconv.Itoa(int(id))
	}
	var notes []string
	if fl.DropReason != "" {
		notes = append(notes, fl.DropReason)
	}
	if fl.Service != "" {
		notes = append(notes, "service "+fl.Service)
	}
	if fl.TcpFlags != "" {
		notes = append(notes, fl.TcpFlags)
	}
	if fl.Reply {
		notes = append(notes, "reply")
	}
	t := time.Unix(0, fl.TimeUnixNano).Format("15:04:05.000000")
	_, err := fmt.Fprintf(w, "%-15s %-8s %-9s %-7s %-5s %-32s %-32s %s\n", t, fl.Node, fl.Verdict, fl.Direction, fl.Protocol,
		endpoint(fl.Source, fl.SourcePort, fl.SourcePod, fl.SourceIdentity),
		endpoint(fl.Destination, fl.DestinationPort, fl.DestinationPod, fl.DestinationIdentity),
		strings.Join(notes, ", "))
	return err
}
