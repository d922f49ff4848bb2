package main

import (
	"encoding/json"
	"net/http"
	"net/http/pprof"

	"github.com/containerd/log"

	"github.com/precopy/precopy/plugin/contentservice"
	"github.com/precopy/precopy/plugin/memstore"
	"github.com/precopy/precopy/plugin/persist"
	"github.com/precopy/precopy/snapshotter"
)

// metrics is what /metrics.json serves.
type metrics struct {
	Content memstore.Metrics `json:"content"`
	// ContentWrites is where content writes spent their time.
	ContentWrites contentservice.WriteMetrics `json:"content_writes"`
	Snapshots     *snapshotter.Metrics        `json:"snapshots,omitempty"` // nil without --snapshot-limit
	Persist       *persist.Metrics            `json:"persist,omitempty"`   // nil without --persist-dir
}

// metricsHandler serves the daemon's metrics as JSON at /metrics.json (a
// stopgap until they are exported for Prometheus; /metrics is left free
// for that), and Go's profiles at /debug/pprof/, as containerd's debug
// socket does, to see where a write's time goes in precopyd.
func metricsHandler(d *daemon) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("GET /metrics.json", func(w http.ResponseWriter, r *http.Request) {
		m := metrics{Content: d.content.store.Metrics(), ContentWrites: d.contentAPI.Metrics()}
		if d.snapshots != nil {
			sm, err := d.snapshots.Metrics(r.Context())
			if err != nil {
				log.G(r.Context()).WithError(err).Warn("snapshotter metrics")
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			m.Snapshots = &sm
		}
		if d.content.persist != nil {
			pm := d.content.persist.Metrics()
			m.Persist = &pm
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(m)
	})
	return mux
}
