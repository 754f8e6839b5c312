// Command katalyst-workload is the one static binary inside the test bed's locally built container images
// (sandbox/kube/images.py): no registry is reachable, so the pod sandbox and the test workloads are built here.
//
//	katalyst-workload pause                                  the pod sandbox: wait for SIGTERM/SIGINT, reap orphans
//	katalyst-workload grow-memory --mib N [--step-mib 4] [--interval 50ms] [--hold]
//	katalyst-workload burn-cpu [--threads 1] [--seconds 0]   0 seconds: until SIGTERM
//	katalyst-workload sleep [--seconds 0]                    0 seconds: until SIGTERM
//
// Called through a link or copy named after a subcommand (/pause), it runs that subcommand.
// Every subcommand exits 0 on SIGTERM/SIGINT: as PID 1 of a container a signal without a handler is ignored,
// so the handler is what lets `kill` and the kubelet stop it at once.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const usage = `usage: katalyst-workload COMMAND [OPTIONS]
  pause                                              block until SIGTERM/SIGINT, reaping orphaned children
  grow-memory --mib N [--step-mib 4] [--interval 50ms] [--hold]
                                                     allocate and touch N MiB in steps, print rss_mib=..., then exit (or hold)
  burn-cpu [--threads 1] [--seconds 0]               busy loop on THREADS threads (0 seconds: until SIGTERM)
  sleep [--seconds 0]                                sleep (0 seconds: until SIGTERM)
`

func main() {
	commands := map[string]func([]string) int{
		"pause":       pause,
		"grow-memory": growMemory,
		"burn-cpu":    burnCPU,
		"sleep":       sleep,
	}
	if run, ok := commands[filepath.Base(os.Args[0])]; ok {
		os.Exit(run(os.Args[1:]))
	}
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	run, ok := commands[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "katalyst-workload: unknown command %q\n%s", os.Args[1], usage)
		os.Exit(2)
	}
	os.Exit(run(os.Args[2:]))
}

// stopSignals delivers SIGTERM and SIGINT.
func stopSignals() chan os.Signal {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	return stop
}

// waitStop waits for SIGTERM/SIGINT, or for the duration when it is positive; it returns the exit code (0).
func waitStop(stop chan os.Signal, seconds float64) int {
	var timeout <-chan time.Time
	if seconds > 0 {
		timeout = time.After(time.Duration(seconds * float64(time.Second)))
	}
	select {
	case <-stop:
	case <-timeout:
	}
	return 0
}

func parse(name string, flags *flag.FlagSet, args []string) bool {
	flags.Usage = func() { fmt.Fprint(os.Stderr, usage) }
	if err := flags.Parse(args); err != nil {
		return false
	}
	if flags.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "katalyst-workload %s: unexpected arguments %q\n", name, flags.Args())
		return false
	}
	return true
}

func pause(args []string) int {
	flags := flag.NewFlagSet("pause", flag.ContinueOnError)
	if !parse("pause", flags, args) {
		return 2
	}
	stop := stopSignals()
	// As PID 1 of the pod's PID namespace it inherits every orphan: reap them, or they stay zombies.
	children := make(chan os.Signal, 16)
	signal.Notify(children, syscall.SIGCHLD)
	reap()
	for {
		select {
		case <-stop:
			return 0
		case <-children:
			reap()
		}
	}
}

// reap collects every exited child; SIGCHLD signals coalesce, so one signal may stand for several children.
func reap() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			return
		}
	}
}

func growMemory(args []string) int {
	flags := flag.NewFlagSet("grow-memory", flag.ContinueOnError)
	mib := flags.Int("mib", -1, "MiB to allocate and touch (required)")
	stepMiB := flags.Int("step-mib", 4, "MiB per step")
	interval := flags.Duration("interval", 50*time.Millisecond, "pause between steps")
	hold := flags.Bool("hold", false, "keep the memory until SIGTERM instead of exiting")
	if !parse("grow-memory", flags, args) {
		return 2
	}
	if *mib < 0 || *stepMiB <= 0 || *interval < 0 {
		fmt.Fprintln(os.Stderr, "katalyst-workload grow-memory: --mib N (>= 0) is required, --step-mib must be > 0, --interval >= 0")
		return 2
	}
	stop := stopSignals()
	pageSize := os.Getpagesize()
	// mmap'd chunks, outside the Go heap: the garbage collector neither moves, frees nor doubles them.
	var chunks [][]byte
	for allocated := 0; allocated < *mib; {
		step := min(*stepMiB, *mib-allocated)
		chunk, err := syscall.Mmap(-1, 0, step<<20, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANONYMOUS)
		if err != nil {
			fmt.Fprintf(os.Stderr, "katalyst-workload grow-memory: mmap %d MiB after %d MiB: %v\n", step, allocated, err)
			return 1
		}
		// A write to every page makes it resident (a read would map the shared zero page); the cgroup is charged now.
		for offset := 0; offset < len(chunk); offset += pageSize {
			chunk[offset] = 1
		}
		chunks = append(chunks, chunk)
		allocated += step
		// os.Stdout is unbuffered: each line is one write(2), seen at once through a pipe or a container log.
		fmt.Printf("rss_mib=%d allocated_mib=%d\n", residentMiB(), allocated)
		if allocated < *mib && *interval > 0 {
			select {
			case <-stop:
				return 0
			case <-time.After(*interval):
			}
		}
	}
	fmt.Printf("done allocated_mib=%d rss_mib=%d\n", *mib, residentMiB())
	if *hold {
		code := waitStop(stop, 0)
		runtime.KeepAlive(chunks)
		return code
	}
	runtime.KeepAlive(chunks)
	return 0
}

// residentMiB is this process's resident set from /proc/self/statm (-1 when unreadable).
func residentMiB() int {
	data, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return -1
	}
	fields := strings.Fields(string(data))
	if len(fields) < 2 {
		return -1
	}
	pages, err := strconv.Atoi(fields[1])
	if err != nil {
		return -1
	}
	return pages * os.Getpagesize() >> 20
}

func burnCPU(args []string) int {
	flags := flag.NewFlagSet("burn-cpu", flag.ContinueOnError)
	threads := flags.Int("threads", 1, "busy threads")
	seconds := flags.Float64("seconds", 0, "stop after this many seconds (0: until SIGTERM)")
	if !parse("burn-cpu", flags, args) {
		return 2
	}
	if *threads < 1 || *seconds < 0 {
		fmt.Fprintln(os.Stderr, "katalyst-workload burn-cpu: --threads must be >= 1, --seconds >= 0")
		return 2
	}
	stop := stopSignals()
	// One spare P so the signal-handling goroutine is never starved by the spinners.
	runtime.GOMAXPROCS(*threads + 1)
	for i := 0; i < *threads; i++ {
		go spin()
	}
	return waitStop(stop, *seconds)
}

func spin() {
	for { // asynchronous preemption (Go >= 1.14) still lets the scheduler in
	}
}

func sleep(args []string) int {
	flags := flag.NewFlagSet("sleep", flag.ContinueOnError)
	seconds := flags.Float64("seconds", 0, "stop after this many seconds (0: until SIGTERM)")
	if !parse("sleep", flags, args) {
		return 2
	}
	return waitStop(stopSignals(), *seconds)
}
