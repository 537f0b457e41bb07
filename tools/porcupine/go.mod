module github.com/meridian-rt/meridian/tools/porcupine

go 1.22

require github.com/anishathalye/porcupine v1.3.1
