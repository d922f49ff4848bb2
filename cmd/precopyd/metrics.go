package main

import (
	"encoding/json"
	"net/http"

	"github.com/precopy/precopy/plugin/memstore"
)

// metricsHandler serves the store's metrics as JSON at /metrics.json. A
// stopgap until they are exported for Prometheus; /metrics is left free
// for that.
func metricsHandler(store *memstore.Store) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics.json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(store.Metrics())
	})
	return mux
}
