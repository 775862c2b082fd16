// A BFF written by hand in Go with the standard library only — net/http's client pool,
// one goroutine per backend, encoding/json — the engine KrakenD CE's lura is built on.
// benches/compare.py runs it beside manifold; it does the work of routes.toml's two
// routes: the dashboard's fan-out of three (user shaped, orders' items, recommendations
// or [] when they fail, 1 s for the whole) and the pass-through of one user.
//
//	GO111MODULE=off go build -o bff-go bff.go && PORT=7104 UPSTREAM=http://127.0.0.1:7001 ./bff-go
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"
)

var upstream = env("UPSTREAM", "http://127.0.0.1:7001")

// Enough idle connections per host that 64 concurrent clients never dial per request.
var client = &http.Client{Transport: &http.Transport{
	MaxIdleConns:        1024,
	MaxIdleConnsPerHost: 512,
	IdleConnTimeout:     time.Minute,
}}

func env(key, fallback string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return fallback
}

// fetch decodes the upstream's JSON answer at path into out.
func fetch(ctx context.Context, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, upstream+path, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 400 {
		io.Copy(io.Discard, resp.Body)
		return fmt.Errorf("%s answered %d", path, resp.StatusCode)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

func dashboard(w http.ResponseWriter, r *http.Request) {
	id := url.PathEscape(strings.TrimPrefix(r.URL.Path, "/api/dashboard/"))
	ctx, cancel := context.WithTimeout(r.Context(), time.Second)
	defer cancel()

	var (
		wg                 sync.WaitGroup
		user               map[string]any
		orders             struct{ Items any `json:"items"` }
		recs               any
		userErr, ordersErr error
	)
	wg.Add(3)
	go func() { defer wg.Done(); userErr = fetch(ctx, "/users/"+id, &user) }()
	go func() { defer wg.Done(); ordersErr = fetch(ctx, "/orders?customer="+id, &orders) }()
	go func() {
		defer wg.Done()
		if fetch(ctx, "/recommendations/"+id, &recs) != nil {
			recs = []any{} // optional: left empty when it fails
		}
	}()
	wg.Wait()
	if userErr != nil || ordersErr != nil {
		http.Error(w, `{"error":"upstream"}`, http.StatusBadGateway)
		return
	}

	shaped := map[string]any{}
	for _, key := range []string{"id", "name", "customer_id"} {
		if v, ok := user[key]; ok {
			shaped[key] = v
		}
	}
	if v, ok := user["avatar"]; ok {
		shaped["avatar_url"] = v
	}
	w.Header().Set("content-type", "application/json")
	w.Header().Set("x-manifold-completed", "true")
	json.NewEncoder(w).Encode(map[string]any{"user": shaped, "orders": orders.Items, "recommendations": recs})
}

func passthrough(w http.ResponseWriter, r *http.Request) {
	id := url.PathEscape(strings.TrimPrefix(r.URL.Path, "/api/users/"))
	req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, upstream+"/users/"+id, nil)
	if err == nil {
		var resp *http.Response
		if resp, err = client.Do(req); err == nil {
			defer resp.Body.Close()
			w.Header().Set("content-type", resp.Header.Get("content-type"))
			w.WriteHeader(resp.StatusCode)
			io.Copy(w, resp.Body)
			return
		}
	}
	http.Error(w, `{"error":"upstream"}`, http.StatusBadGateway)
}

func main() {
	mux := http.NewServeMux()
	mux.HandleFunc("/api/dashboard/", dashboard)
	mux.HandleFunc("/api/users/", passthrough)
	if err := http.ListenAndServe("127.0.0.1:"+env("PORT", "7104"), mux); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
