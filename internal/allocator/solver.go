package allocator

import (
	"cmp"
	"context"
	"slices"
	"time"
)

// solver chooses how many devices to take from each class. Objectives are
// compared lexicographically: larger set score S first, then smaller degree
// sum D (the cut to the devices left free).
type solver struct {
	c, k    int
	items   [][]int // per class, device indices (must-include first)
	cap     []int
	min     []int
	w       []int64 // c×c pair scores between members of two classes; diagonal within a class
	deg     []int64 // per class, a member's score sum to every other free device
	capRest []int   // capRest[i] = sum of cap[i:]
	minRest []int   // minRest[i] = sum of min[i:]
	// pref[(i*c+x)*k+t]: the t best pair scores from a member of class x to
	// other free devices in classes i.., for x >= i, t < k.
	pref []int64
	// lowDeg[i*(k+1)+t]: the sum of the t smallest degrees among classes i...
	lowDeg []int64
	ready  []bool // depth i's rows of pref and lowDeg are filled
	nb     [][]neighbour
	byDeg  []int // classes by ascending degree

	cnt     []int
	attach  []int64 // attach[x]: score from a member of x to everything chosen
	scratch []gain

	best         []int
	bestS, bestD int64
	have         bool

	nodes    int64
	deadline time.Time
	done     <-chan struct{}
	bounded  bool // the deadline applies
	stopped  bool // the deadline passed: best may not be optimal
}

type gain struct {
	v int64
	n int
}

// newSolver builds the search for size devices over the classes, ordered
// must-include classes first, then cluster by cluster.
func newSolver(t *Topology, cls []class, size int) *solver {
	c := len(cls)
	G := t.ngroups
	w := func(a, b int) int64 {
		if a == b {
			return cls[a].win
		}
		return t.w[cls[a].rep*G+cls[b].rep]
	}
	// Potential: what a member of x could score in the best case, counting
	// must-include devices as already chosen.
	pot := make([]int64, c)
	nb := make([]gain, 0, c)
	for x := range cls {
		nb = nb[:0]
		var att int64
		for y := range cls {
			n := len(cls[y].items)
			if y == x {
				n--
			}
			if n > 0 {
				nb = append(nb, gain{w(x, y), n})
			}
			att += int64(cls[y].min) * w(x, y)
			if y == x && cls[y].min > 0 {
				att -= w(x, y)
			}
		}
		slices.SortFunc(nb, func(a, b gain) int { return cmp.Compare(b.v, a.v) })
		pot[x] = 2*att + topSum(nb, size-1)
	}
	// Order: must-include classes first, then repeatedly the class most
	// strongly tied to those already ordered (potential breaks ties and picks
	// the first), so a well-connected cluster (an NVLink island, a GPU's
	// partitions) is decided together and the bound tightens early.
	order := make([]int, 0, c)
	placed := make([]bool, c)
	tie := make([]int64, c) // score to every device of the classes placed
	for len(order) < c {
		bx := -1
		for x := range cls {
			if placed[x] {
				continue
			}
			if bx < 0 {
				bx = x
				continue
			}
			mx, mb := cls[x].min > 0, cls[bx].min > 0
			if mx != mb {
				if mx {
					bx = x
				}
				continue
			}
			if tie[x] > tie[bx] || (tie[x] == tie[bx] && pot[x] > pot[bx]) {
				bx = x
			}
		}
		placed[bx] = true
		order = append(order, bx)
		for x := range cls {
			tie[x] += int64(len(cls[bx].items)) * w(x, bx)
		}
	}

	s := &solver{c: c, k: size}
	s.items = make([][]int, c)
	s.cap = make([]int, c)
	s.min = make([]int, c)
	s.w = make([]int64, c*c)
	for i, o := range order {
		s.items[i] = cls[o].items
		s.cap[i] = len(cls[o].items)
		s.min[i] = cls[o].min
		for j, p := range order {
			s.w[i*c+j] = w(o, p)
		}
	}
	s.deg = make([]int64, c)
	for x := 0; x < c; x++ {
		for y := 0; y < c; y++ {
			n := s.cap[y]
			if y == x {
				n--
			}
			s.deg[x] += int64(n) * s.w[x*c+y]
		}
	}
	s.capRest = make([]int, c+1)
	s.minRest = make([]int, c+1)
	for i := c - 1; i >= 0; i-- {
		s.capRest[i] = s.capRest[i+1] + s.cap[i]
		s.minRest[i] = s.minRest[i+1] + s.min[i]
	}
	s.cnt = make([]int, c)
	s.attach = make([]int64, c)
	s.best = make([]int, c)
	s.scratch = make([]gain, 0, c)
	return s
}

// topSum is the sum of the t largest values of a list sorted descending.
func topSum(sorted []gain, t int) int64 {
	var s int64
	for _, g := range sorted {
		if t <= 0 {
			break
		}
		n := min(g.n, t)
		s += int64(n) * g.v
		t -= n
	}
	return s
}

// neighbour is one entry of a class's pair scores, best first.
type neighbour struct {
	v    int64
	n, y int // n devices of class y score v
}

// tables prepares the bound tables; each depth's rows are filled on first
// use (depthTables), as pruning leaves many depths unvisited.
func (s *solver) tables() {
	c, k := s.c, s.k
	s.pref = make([]int64, c*c*k)
	s.lowDeg = make([]int64, c*(k+1))
	s.ready = make([]bool, c)
	s.nb = make([][]neighbour, c)
	all := make([]neighbour, 0, c*c)
	for x := 0; x < c; x++ {
		start := len(all)
		for y := 0; y < c; y++ {
			n := s.cap[y]
			if y == x {
				n--
			}
			if n > 0 {
				all = append(all, neighbour{s.w[x*c+y], n, y})
			}
		}
		s.nb[x] = all[start:len(all):len(all)]
		slices.SortFunc(s.nb[x], func(a, b neighbour) int { return cmp.Compare(b.v, a.v) })
	}
	s.byDeg = make([]int, c)
	for i := range s.byDeg {
		s.byDeg[i] = i
	}
	slices.SortStableFunc(s.byDeg, func(a, b int) int { return cmp.Compare(s.deg[a], s.deg[b]) })
}

// depthTables fills pref and lowDeg for depth i.
func (s *solver) depthTables(i int) {
	s.ready[i] = true
	c, k := s.c, s.k
	for x := i; x < c; x++ {
		row := s.pref[(i*c+x)*k : (i*c+x+1)*k]
		t := 0
		var sum int64
		for _, g := range s.nb[x] {
			if g.y < i {
				continue
			}
			for n := 0; n < g.n && t+1 < k; n++ {
				sum += g.v
				t++
				row[t] = sum
			}
			if t+1 >= k {
				break
			}
		}
		for t++; t < k; t++ {
			row[t] = sum
		}
	}
	row := s.lowDeg[i*(k+1) : (i+1)*(k+1)]
	t := 0
	var sum int64
	for _, x := range s.byDeg {
		if x < i {
			continue
		}
		for n := 0; n < s.cap[x] && t < k; n++ {
			sum += s.deg[x]
			t++
			row[t] = sum
		}
	}
	for t++; t <= k; t++ {
		row[t] = sum
	}
}

// offer records cnt as the best answer if it beats it.
func (s *solver) offer(S, D int64) {
	if !s.have || S > s.bestS || (S == s.bestS && D < s.bestD) {
		s.have = true
		s.bestS, s.bestD = S, D
		copy(s.best, s.cnt)
	}
}

// load sets the search state to counts cnt and returns its objective.
func (s *solver) load(cnt []int) (S, D int64) {
	c := s.c
	copy(s.cnt, cnt)
	for x := 0; x < c; x++ {
		var a int64
		for y := 0; y < c; y++ {
			a += int64(cnt[y]) * s.w[x*c+y]
		}
		s.attach[x] = a
	}
	// attach[x] holds n[x] same-class pairs and every cross pair, which
	// the sum over x sees from both ends.
	var cross int64
	for x := 0; x < c; x++ {
		n := int64(cnt[x])
		S += n * (n - 1) / 2 * s.w[x*c+x]
		cross += n * (s.attach[x] - n*s.w[x*c+x])
		D += n * s.deg[x]
	}
	S += cross / 2
	return S, D
}

// add moves n devices of class x into the state.
func (s *solver) add(x, n int) {
	c := s.c
	s.cnt[x] += n
	for y := 0; y < c; y++ {
		s.attach[y] += int64(n) * s.w[y*c+x]
	}
}

// greedy fills the state up to k devices, each step taking the device that
// adds the most score (then the least degree), and returns the objective.
func (s *solver) greedy(S, D int64) (int64, int64) {
	r := 0
	for _, n := range s.cnt {
		r += n
	}
	for ; r < s.k; r++ {
		bx := -1
		for x := 0; x < s.c; x++ {
			if s.cnt[x] >= s.cap[x] {
				continue
			}
			if bx < 0 || s.attach[x] > s.attach[bx] || (s.attach[x] == s.attach[bx] && s.deg[x] < s.deg[bx]) {
				bx = x
			}
		}
		if bx < 0 {
			break // cannot happen: capacity covers k
		}
		S += s.attach[bx]
		D += s.deg[bx]
		s.add(bx, 1)
	}
	return S, D
}

// swaps improves the state by moving n devices from one class to another
// (n = 1 is a plain swap; larger n moves a GPU's partitions together) while
// that raises the objective, and returns the objective.
func (s *solver) swaps(S, D int64) (int64, int64) {
	c := s.c
	for iter := 0; iter < 4*s.k+16; iter++ {
		bestDS, bestDD := int64(0), int64(0)
		ba, bb, bn := -1, -1, 0
		for a := 0; a < c; a++ {
			m := int64(s.cnt[a])
			if m <= int64(s.min[a]) {
				continue
			}
			waa := s.w[a*c+a]
			xa := s.attach[a] - m*waa // one member's score to other classes
			for b := 0; b < c; b++ {
				p := int64(s.cnt[b])
				if b == a || p >= int64(s.cap[b]) {
					continue
				}
				wbb, wab := s.w[b*c+b], s.w[a*c+b]
				top := min(m-int64(s.min[a]), int64(s.cap[b])-p)
				for n := int64(1); n <= top; n++ {
					lose := n*xa + (m*(m-1)-(m-n)*(m-n-1))/2*waa
					xb := s.attach[b] - n*wab - p*wbb
					win := n*xb + ((p+n)*(p+n-1)-p*(p-1))/2*wbb
					dS, dD := win-lose, n*(s.deg[b]-s.deg[a])
					if dS > bestDS || (dS == bestDS && dD < bestDD) {
						bestDS, bestDD, ba, bb, bn = dS, dD, a, b, int(n)
					}
				}
			}
		}
		if ba < 0 {
			break
		}
		s.add(ba, -bn)
		s.add(bb, bn)
		S += bestDS
		D += bestDD
	}
	return S, D
}

// maxSeeds bounds how many greedy starts the heuristic tries.
const maxSeeds = 16

// maxTable bounds the bound tables (entries); a request too large for them
// keeps the heuristic answer.
const maxTable = 1 << 20

// solve leaves the best counts found in s.best.
func (s *solver) solve(ctx context.Context) {
	space := 1.0
	for _, n := range s.cap {
		space *= float64(n + 1)
	}
	s.bounded = space > exactSpace
	if s.bounded {
		dl, ok := ctx.Deadline()
		if !ok {
			dl = time.Now().Add(DefaultSearchBudget)
		}
		s.deadline = dl
		s.done = ctx.Done()
	}
	// Heuristic: greedy from the must-include devices alone and from them
	// plus one device of each of the first classes in search order, then
	// moves. The first start always runs, so there is always an answer.
	base := slices.Clone(s.min)
	seeds := 0
	for x := -1; x < s.c && seeds <= maxSeeds; x++ {
		if x >= 0 && base[x] >= s.cap[x] {
			continue
		}
		start := slices.Clone(base)
		if x >= 0 {
			if s.minRest[0] >= s.k {
				break
			}
			start[x]++
		}
		S, D := s.load(start)
		S, D = s.greedy(S, D)
		S, D = s.swaps(S, D)
		s.offer(S, D)
		seeds++
		if s.expired() {
			s.stopped = true
			return
		}
	}
	if s.bounded && s.c*s.c*(s.k+1) > maxTable {
		s.stopped = true
		return
	}
	// Branch and bound over the counts.
	s.tables()
	zero := make([]int, s.c)
	s.load(zero)
	s.dfs(0, 0, 0, 0)
}

func (s *solver) expired() bool {
	if !s.bounded {
		return false
	}
	select {
	case <-s.done:
		return true
	default:
	}
	return !time.Now().Before(s.deadline)
}

func (s *solver) dfs(i, r int, S, D int64) {
	if r == s.k {
		s.offer(S, D)
		return
	}
	if s.stopped || i == s.c {
		return
	}
	s.nodes++
	if s.nodes&1023 == 0 && s.expired() {
		s.stopped = true
		return
	}
	q := s.k - r
	if !s.ready[i] {
		s.depthTables(i)
	}
	if s.have {
		ub := 2*S + s.bound(i, q)
		if ub < 2*s.bestS || (ub == 2*s.bestS && D+s.lowDeg[i*(s.k+1)+q] >= s.bestD) {
			return
		}
	}
	c := s.c
	hi := min(s.cap[i], q-s.minRest[i+1])
	lo := max(s.min[i], q-s.capRest[i+1])
	wii := s.w[i*c+i]
	for n := hi; n >= lo; n-- {
		n64 := int64(n)
		dS := n64*s.attach[i] + n64*(n64-1)/2*wii
		if n > 0 {
			s.add(i, n)
		}
		s.dfs(i+1, r+n, S+dS, D+n64*s.deg[i])
		if n > 0 {
			s.add(i, -n)
		}
		if s.stopped {
			return
		}
	}
}

// bound is twice an upper bound on the score q more devices from classes
// i.. can add: each device at most its score to what is chosen plus half its
// q-1 best scores to other devices of those classes.
func (s *solver) bound(i, q int) int64 {
	c, k := s.c, s.k
	g := s.scratch[:0]
	for x := i; x < c; x++ {
		g = append(g, gain{2*s.attach[x] + s.pref[(i*c+x)*k+q-1], s.cap[x]})
	}
	slices.SortFunc(g, func(a, b gain) int { return cmp.Compare(b.v, a.v) })
	s.scratch = g
	return topSum(g, q)
}
