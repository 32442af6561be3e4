package node

import "time"

// CutAfterPublish makes n's next intake stop once JetStream stored its
// messages, as a node killed there would (see clusterNode.cutAfterPublish).
func CutAfterPublish(n *Node) { n.cluster.cutAfterPublish.Store(true) }

// MoveTiers runs n's periodic tier movement now.
func MoveTiers(n *Node) []string { return n.moveTiers() }

// Unsettled counts the deliveries n took in from JetStream and has not
// settled (acked) yet.
func Unsettled(n *Node) int {
	n.cluster.mu.Lock()
	defer n.cluster.mu.Unlock()
	return len(n.cluster.acks)
}

// SetCountsEvery sets how often nodes started after it store changed
// campaign counts besides before acks; it returns the old value.
func SetCountsEvery(d time.Duration) time.Duration {
	old := countsEvery
	countsEvery = d
	return old
}
