// kubeprobe: an in-cluster API client for the real node's task image
// (e2e/cluster up --real-node), to check what a pod's client sees: the
// kubernetes Service (KUBERNETES_SERVICE_HOST/PORT, through kube-proxy),
// the cluster CA and the projected ServiceAccount token, as client-go's
// in-cluster config reads them.
//
//	kubeprobe whoami     POST a SelfSubjectReview, print the user it names
//	kubeprobe get PATH   GET PATH, print the status and the body
//
// Exits 0 on a 2xx answer, 1 otherwise.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

const saDir = "/var/run/secrets/kubernetes.io/serviceaccount"

func main() {
	if len(os.Args) < 2 || (os.Args[1] == "get" && len(os.Args) < 3) {
		fmt.Fprintln(os.Stderr, "usage: kubeprobe whoami | kubeprobe get PATH")
		os.Exit(2)
	}
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		fail("KUBERNETES_SERVICE_HOST or KUBERNETES_SERVICE_PORT is not set")
	}
	token, err := os.ReadFile(saDir + "/token")
	if err != nil {
		fail("%v", err)
	}
	caPEM, err := os.ReadFile(saDir + "/ca.crt")
	if err != nil {
		fail("%v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		fail("no certificate in %s/ca.crt", saDir)
	}
	client := &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	base := "https://" + net.JoinHostPort(host, port)
	var req *http.Request
	switch os.Args[1] {
	case "whoami":
		body := `{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}`
		req, err = http.NewRequest("POST", base+"/apis/authentication.k8s.io/v1/selfsubjectreviews", strings.NewReader(body))
		if req != nil {
			req.Header.Set("Content-Type", "application/json")
		}
	case "get":
		req, err = http.NewRequest("GET", base+os.Args[2], nil)
	default:
		fail("unknown command %q", os.Args[1])
	}
	if err != nil {
		fail("%v", err)
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	resp, err := client.Do(req)
	if err != nil {
		fail("%v", err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	fmt.Printf("%s %s\n%s\n", req.Method, resp.Status, out)
	if resp.StatusCode/100 != 2 {
		os.Exit(1)
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "kubeprobe: "+format+"\n", args...)
	os.Exit(1)
}
