package observability

import (
	"bytes"
	"fmt"
	"html"
	"math"
	"sort"
	"strings"
	"time"
)

// pictured are the panels drawn in docs/dashboard.svg, in that order.
var pictured = []string{
	"Throughput by outcome", "Handler latency", "In flight against prefetch", "Readiness of each replica",
	"Queue depth (RabbitMQ exporter)", "Circuit breaker", "Rate limit wait", "Memory",
}

// phaseShades colour the phases of the scenario drawn on the panels.
var phaseShades = map[string]string{"refused": "#eab839", "stuck": "#ef843c", "cut": "#e24d42", "down": "#ba43a9"}

var palette = []string{"#7eb26d", "#eab839", "#6ed0e0", "#ef843c", "#e24d42", "#1f78c1", "#ba43a9", "#705da0"}

// drawDashboard draws the pictured panels from the evaluated series as
// Grafana lays out a dashboard: dark panels, a title, the series as lines
// over the run, the phases of the scenario shaded, a legend below.
// Names in the legends are shortened by rename (the test's queue name to
// the one of a user, say).
func drawDashboard(results []panelResult, phases []phase, from, to time.Time, rename *strings.Replacer) []byte {
	const (
		cols, pw, ph, gap = 4, 420, 262, 10
		left, right, top  = 52, 10, 42
		plotH             = 150
	)
	byTitle := map[string]panelResult{}
	for _, r := range results {
		byTitle[r.Title] = r
	}
	rows := (len(pictured) + cols - 1) / cols
	w, h := cols*pw+(cols+1)*gap, rows*ph+(rows+1)*gap+24
	var b bytes.Buffer
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="Helvetica, Arial, sans-serif">`+"\n", w, h, w, h)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="#111217"/>`+"\n", w, h)
	fmt.Fprintf(&b, `<text x="%d" y="20" fill="#ccccdc" font-size="13">warren dashboard, drawn from the test run: %s</text>`+"\n",
		gap, html.EscapeString(phaseList(phases, from)))
	span := to.Sub(from).Seconds()
	for i, title := range pictured {
		r := byTitle[title]
		x0, y0 := gap+(i%cols)*(pw+gap), 24+gap+(i/cols)*(ph+gap)
		fmt.Fprintf(&b, `<g transform="translate(%d,%d)">`+"\n", x0, y0)
		fmt.Fprintf(&b, `<rect width="%d" height="%d" rx="3" fill="#181b1f" stroke="#2c3235"/>`+"\n", pw, ph)
		fmt.Fprintf(&b, `<text x="8" y="18" fill="#ccccdc" font-size="13" font-weight="bold">%s</text>`+"\n", html.EscapeString(title))
		plotW := float64(pw - left - right)
		xOf := func(ms int64) float64 {
			return left + plotW*(float64(ms)-float64(from.UnixMilli()))/1000/span
		}
		for _, p := range phases {
			shade, ok := phaseShades[p.name]
			if !ok {
				continue
			}
			x1, x2 := xOf(p.from.UnixMilli()), xOf(p.to.UnixMilli())
			fmt.Fprintf(&b, `<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="%s" fill-opacity="0.12"/>`, x1, top, x2-x1, plotH, shade)
			fmt.Fprintf(&b, `<text x="%.1f" y="%d" fill="%s" font-size="10" text-anchor="middle">%s</text>`+"\n", (x1+x2)/2, top-4, shade, html.EscapeString(p.name))
		}
		var all []series
		refs := make([]string, 0, len(r.byRef))
		for ref := range r.byRef {
			refs = append(refs, ref)
		}
		sort.Strings(refs)
		for _, ref := range refs {
			all = append(all, r.byRef[ref]...)
		}
		top1 := 0.0
		for _, s := range all {
			if m := s.max(); !math.IsInf(m, 0) {
				top1 = math.Max(top1, m)
			}
		}
		yMax := niceCeil(top1)
		yOf := func(v float64) float64 { return top + plotH - plotH*v/yMax }
		for k := 0; k <= 4; k++ {
			v := yMax * float64(k) / 4
			y := yOf(v)
			fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#2c3235"/>`, left, pw-right, y, y)
			fmt.Fprintf(&b, `<text x="%d" y="%.1f" fill="#8e8e8e" font-size="10" text-anchor="end">%s</text>`+"\n", left-4, y+3, short(v))
		}
		tick := niceCeil(span / 6)
		for s := 0.0; s <= span; s += tick {
			x := xOf(from.UnixMilli() + int64(s*1000))
			fmt.Fprintf(&b, `<text x="%.1f" y="%d" fill="#8e8e8e" font-size="10" text-anchor="middle">%ds</text>`, x, top+plotH+12, int(s))
		}
		for j, s := range all {
			color := palette[j%len(palette)]
			var path bytes.Buffer
			pen := false
			for _, p := range s.points {
				if math.IsNaN(p.F) {
					pen = false
					continue
				}
				cmd := "L"
				if !pen {
					cmd = "M"
				}
				fmt.Fprintf(&path, "%s%.1f,%.1f ", cmd, xOf(p.T), yOf(p.F))
				pen = true
			}
			fmt.Fprintf(&b, `<path d="%s" fill="none" stroke="%s" stroke-width="1.5"/>`+"\n", path.String(), color)
			lx, ly := 8+(j%2)*(pw/2), top+plotH+28+(j/2)*14
			fmt.Fprintf(&b, `<rect x="%d" y="%d" width="10" height="3" fill="%s"/><text x="%d" y="%d" fill="#ccccdc" font-size="10">%s</text>`+"\n",
				lx, ly-4, color, lx+14, ly, html.EscapeString(trimLegend(rename.Replace(s.legend))))
		}
		b.WriteString("</g>\n")
	}
	b.WriteString("</svg>\n")
	return b.Bytes()
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 || math.IsNaN(v) {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

// short writes an axis value: 1.5, 20, 3M.
func short(v float64) string {
	switch {
	case v >= 1<<20:
		return fmt.Sprintf("%.0fMi", v/(1<<20))
	case v >= 1000:
		return fmt.Sprintf("%.0fk", v/1000)
	case v == math.Trunc(v):
		return fmt.Sprintf("%.0f", v)
	default:
		return fmt.Sprintf("%.2g", v)
	}
}

// trimLegend keeps a legend short enough for half a panel.
func trimLegend(s string) string {
	if len(s) > 34 {
		return "…" + s[len(s)-33:]
	}
	return s
}
