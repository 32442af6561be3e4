package engine_test

func crashChild() {}
