package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

// Output formats of -o.
const (
	formatTable = "table"
	formatJSON  = "json"
)

// addOutputFlag adds -o/--output to cmd, stored in *format.
func addOutputFlag(cmd *cobra.Command, format *string) {
	cmd.Flags().StringVarP(format, "output", "o", formatTable, "output format: table or json")
}

func checkFormat(format string) error {
	switch format {
	case formatTable, formatJSON:
		return nil
	}
	return fmt.Errorf("-o %q: unknown output format; use table or json", format)
}

// writeJSON writes v as indented JSON and a newline.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// table writes aligned columns. Rows are buffered until flush.
type table struct{ tw *tabwriter.Writer }

func newTable(w io.Writer, header ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)}
	if len(header) > 0 {
		t.row(header...)
	}
	return t
}

func (t *table) row(cells ...string) { fmt.Fprintln(t.tw, strings.Join(cells, "\t")) }

func (t *table) flush() error { return t.tw.Flush() }

// writeReport prints a bench report: one JSON object with -o json, else
// the METRIC/VALUE table.
func writeReport(w io.Writer, format string, report any) error {
	if format == formatJSON {
		return writeJSON(w, report)
	}
	return writeMetrics(w, report)
}

// writeMetrics prints a flat report struct as a METRIC/VALUE table, one row
// per JSON field in declaration order, so the table always names what -o
// json names.
func writeMetrics(w io.Writer, report any) error {
	b, err := json.Marshal(report)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if _, err := dec.Token(); err != nil { // {
		return err
	}
	t := newTable(w, "METRIC", "VALUE")
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			return err
		}
		v, err := dec.Token()
		if err != nil {
			return err
		}
		t.row(fmt.Sprint(k), fmt.Sprint(v))
	}
	return t.flush()
}
