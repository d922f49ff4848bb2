package benchresults

import (
	"fmt"
	"image/color"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// PausePlot is the workload's pause against memory size, one line per
// configuration, medians with min–max bars. It returns nil when no cell
// has the workload.
func PausePlot(cells []*Cell, workload string, configs []string) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Pause the workload perceived (%s dirtying)", workload)
	p.X.Label.Text = "container memory (MiB, log scale)"
	p.Y.Label.Text = "longest pause (s): median, min–max"
	p.X.Scale = plot.LogScale{}
	p.Legend.Top, p.Legend.Left = true, true
	p.Add(plotter.NewGrid())
	var sizes []float64
	found := false
	for i, config := range configs {
		var xys plotter.XYs
		var errs plotter.YErrors
		for _, c := range cells {
			if c.Workload != workload || c.Config != config {
				continue
			}
			s := c.Of(pause)
			xys = append(xys, plotter.XY{X: float64(c.SizeMiB), Y: s.Median / 1000})
			errs = append(errs, struct{ Low, High float64 }{(s.Median - s.Min) / 1000, (s.Max - s.Median) / 1000})
			if !slices.Contains(sizes, float64(c.SizeMiB)) {
				sizes = append(sizes, float64(c.SizeMiB))
			}
		}
		if len(xys) == 0 {
			continue
		}
		found = true
		line, points, err := plotter.NewLinePoints(xys)
		if err != nil {
			return nil, err
		}
		line.Color, points.Color = plotutil.Color(i), plotutil.Color(i)
		points.Shape = plotutil.Shape(i)
		bars, err := plotter.NewYErrorBars(struct {
			plotter.XYer
			plotter.YErrorer
		}{xys, errs})
		if err != nil {
			return nil, err
		}
		bars.Color = plotutil.Color(i)
		p.Add(line, points, bars)
		p.Legend.Add(config, line, points)
	}
	if !found {
		return nil, nil
	}
	slices.Sort(sizes)
	var ticks []plot.Tick
	for _, s := range sizes {
		ticks = append(ticks, plot.Tick{Value: s, Label: fmt.Sprintf("%.0f", s)})
	}
	p.X.Tick.Marker = plot.ConstantTicks(ticks)
	p.X.Min, p.X.Max = sizes[0]/1.3, sizes[len(sizes)-1]*1.3
	p.Y.Min = 0
	return p, nil
}

// WindowPlot stacks, for each given cell, the medians of its frozen
// window's parts.
func WindowPlot(title string, cells []*Cell) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = "frozen time (s), medians"
	p.Legend.Top, p.Legend.Left = true, true
	p.Add(plotter.NewGrid())
	var labels []string
	var tallest float64
	for _, c := range cells {
		label := fmt.Sprintf("%d MiB %s", c.SizeMiB, c.Config)
		if c.Storage != StorageDisk {
			label += " on " + c.Storage
		}
		labels = append(labels, label)
		var total float64
		for _, part := range Parts {
			total += c.Of(part.Of).Median / 1000
		}
		tallest = max(tallest, total)
	}
	width := vg.Points(28)
	var below *plotter.BarChart
	for i, part := range Parts {
		values := make(plotter.Values, len(cells))
		for j, c := range cells {
			values[j] = c.Of(part.Of).Median / 1000
		}
		bars, err := plotter.NewBarChart(values, width)
		if err != nil {
			return nil, err
		}
		bars.Color = partColors[i]
		bars.LineStyle.Width = 0
		if below != nil {
			bars.StackOn(below)
		}
		below = bars
		p.Add(bars)
		p.Legend.Add(part.Name, bars)
	}
	p.NominalX(labels...)
	p.X.Tick.Label.Rotation = 0.5
	p.X.Tick.Label.XAlign, p.X.Tick.Label.YAlign = -1, -0.5
	// Headroom for the legend above the bars.
	p.Y.Min, p.Y.Max = 0, tallest*1.45
	return p, nil
}

// partColors tell the frozen window's parts apart in print and for the
// colour-blind (Okabe–Ito).
var partColors = []color.Color{
	color.RGBA{0x99, 0x99, 0x99, 0xff}, // rw diff: grey
	color.RGBA{0xd5, 0x5e, 0x00, 0xff}, // dump: vermillion
	color.RGBA{0xcc, 0x79, 0xa7, 0xff}, // merge: purple
	color.RGBA{0x00, 0x72, 0xb2, 0xff}, // content: blue
	color.RGBA{0xf0, 0xe4, 0x42, 0xff}, // rest: yellow
}
