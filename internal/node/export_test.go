package node

// CutAfterPublish makes n's next intake stop once JetStream stored its
// messages, as a node killed there would (see clusterNode.cutAfterPublish).
func CutAfterPublish(n *Node) { n.cluster.cutAfterPublish.Store(true) }

// MoveTiers runs n's periodic tier movement now.
func MoveTiers(n *Node) []string { return n.moveTiers() }
