// Upstream hosts and a WebSocket client for benches/traffic_ab.py (Go standard
// library only, so `go run` works on a machine without modules).
//
//	go run hosts.go -mode hosts -ports 7201,7202,7203 -slow 7203 -delay 200ms -share 0.1 -admin 7209
//	go run hosts.go -mode wsclient -addr 127.0.0.1:7103 -path /ws/bench -n 10000
//
// hosts: each port serves the benchmark's three JSON answers (/users/{id}, /orders,
// /recommendations/{id}); the -slow port delays -share of its answers by -delay.
// `GET /count` on -admin gives the requests each port served. An `upgrade: websocket`
// request is answered 101 and its bytes are echoed back (no frame parsing).
//
// wsclient: opens -n WebSocket tunnels through the gateway, sends a few bytes on each
// and reads them back, prints "open N" and holds them until killed.
package main

import (
	"bufio"
	"crypto/sha1"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const user = `{"id":42,"name":"Ada Lovelace","avatar":"https://cdn.example/a.png","customer_id":"c-42","email":"ada@example.com"}`
const orders = `{"items":[{"id":1,"total":10.5},{"id":2,"total":99.0},{"id":3,"total":3.25}],"count":3}`
const recs = `[{"sku":"a1","score":0.9},{"sku":"b2","score":0.7}]`

func acceptKey(key string) string {
	h := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	return base64.StdEncoding.EncodeToString(h[:])
}

func hosts(ports []string, slow string, delay time.Duration, share float64, admin string) {
	counts := make(map[string]*int64)
	for _, p := range ports {
		counts[p] = new(int64)
	}
	for _, p := range ports {
		port := p
		count := counts[port]
		mux := http.NewServeMux()
		mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			atomic.AddInt64(count, 1)
			if strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
				hj, ok := w.(http.Hijacker)
				if !ok {
					http.Error(w, "no hijack", 500)
					return
				}
				conn, buf, err := hj.Hijack()
				if err != nil {
					return
				}
				fmt.Fprintf(buf, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
					acceptKey(r.Header.Get("Sec-WebSocket-Key")))
				buf.Flush()
				go func() {
					defer conn.Close()
					io.Copy(conn, buf)
				}()
				return
			}
			if port == slow && rand.Float64() < share {
				time.Sleep(delay)
			}
			w.Header().Set("Content-Type", "application/json")
			switch {
			case strings.HasPrefix(r.URL.Path, "/users/"):
				io.WriteString(w, user)
			case r.URL.Path == "/orders":
				io.WriteString(w, orders)
			case strings.HasPrefix(r.URL.Path, "/recommendations/"):
				io.WriteString(w, recs)
			default:
				http.NotFound(w, r)
			}
		})
		go func() {
			if err := http.ListenAndServe("127.0.0.1:"+port, mux); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
		}()
	}
	http.HandleFunc("/count", func(w http.ResponseWriter, r *http.Request) {
		out := make(map[string]int64)
		for p, c := range counts {
			out[p] = atomic.LoadInt64(c)
		}
		json.NewEncoder(w).Encode(out)
	})
	if err := http.ListenAndServe("127.0.0.1:"+admin, nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func tunnel(addr, path string) (net.Conn, error) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", path, addr)
	r := bufio.NewReader(conn)
	status, err := r.ReadString('\n')
	if err != nil || !strings.Contains(status, " 101 ") {
		conn.Close()
		return nil, fmt.Errorf("handshake: %q %v", status, err)
	}
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			conn.Close()
			return nil, err
		}
		if line == "\r\n" {
			break
		}
	}
	// A few bytes each way: the tunnel carries data, then goes quiet.
	if _, err := conn.Write([]byte("ping")); err != nil {
		conn.Close()
		return nil, err
	}
	back := make([]byte, 4)
	if _, err := io.ReadFull(r, back); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

func wsclient(addr, path string, n int) {
	var mu sync.Mutex
	var conns []net.Conn
	var failed int64
	var wg sync.WaitGroup
	sem := make(chan struct{}, 200)
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := tunnel(addr, path)
			if err != nil {
				if atomic.AddInt64(&failed, 1) == 1 {
					fmt.Fprintln(os.Stderr, err)
				}
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}()
	}
	wg.Wait()
	fmt.Printf("open %d failed %d\n", len(conns), failed)
	select {}
}

func main() {
	mode := flag.String("mode", "hosts", "hosts or wsclient")
	ports := flag.String("ports", "7201,7202,7203", "host ports")
	slow := flag.String("slow", "", "the slow host's port")
	delay := flag.Duration("delay", 200*time.Millisecond, "added to the slow host's slow answers")
	share := flag.Float64("share", 0.1, "share of the slow host's answers delayed")
	admin := flag.String("admin", "7209", "port of GET /count")
	addr := flag.String("addr", "127.0.0.1:7103", "gateway")
	path := flag.String("path", "/ws/bench", "WebSocket path")
	n := flag.Int("n", 10000, "tunnels")
	flag.Parse()
	switch *mode {
	case "hosts":
		hosts(strings.Split(*ports, ","), *slow, *delay, *share, *admin)
	case "wsclient":
		wsclient(*addr, *path, *n)
	default:
		fmt.Fprintln(os.Stderr, "unknown mode")
		os.Exit(2)
	}
}
