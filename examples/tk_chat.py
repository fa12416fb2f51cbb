"""A Tk window hosting a bluelet server: lines sent by TCP clients appear in
the window, and every client gets each line back in capitals.

    python examples/tk_chat.py              # port 4916, until the window closes
    python examples/tk_chat.py --port 0

then `nc 127.0.0.1 4916` and type. Tk's main loop runs the program
(``bluelet.start_guest_run``): every coroutine runs in Tk's thread, between
Tk's own events, so coroutines may touch the widgets directly; a helper
thread only waits for sockets and deadlines. Press q, or close the window,
to stop: the server's coroutines get ``bluelet.Cancelled`` and close their
connections before the window goes.
"""

import argparse
import tkinter

import bluelet


class Window:
    """The window, and the bluelet program that runs inside its main loop."""

    def __init__(self, root, port):
        self.root = root
        self.port = port
        self.status = tkinter.Label(root, text="starting")
        self.status.pack(fill="x")
        self.lines = tkinter.Listbox(root, width=60, height=15)
        self.lines.pack(fill="both", expand=True)
        self.clock = tkinter.Label(root, text="0 s")
        self.clock.pack(fill="x")
        self.run = None

    def start(self):
        self.run = bluelet.start_guest_run(
            self.main(),
            # Tcl is threaded: after() called from the helper thread is
            # carried out by Tk's own thread.
            run_sync_soon_threadsafe=lambda fn: self.root.after(0, fn),
            done_callback=self.done)
        self.root.bind("q", lambda event: self.stop())
        self.root.protocol("WM_DELETE_WINDOW", self.stop)

    def stop(self):
        self.status.config(text="stopping")
        self.run.cancel()

    def done(self, outcome):
        print("stopped:", repr(outcome.error) if outcome.error else outcome.value, flush=True)
        self.root.destroy()

    def main(self):
        listener = bluelet.Listener("127.0.0.1", self.port)
        self.status.config(text="listening on 127.0.0.1:%d" % listener.port)
        print("listening on 127.0.0.1:%d" % listener.port, flush=True)
        yield bluelet.spawn(self.tick())
        yield bluelet.serve(listener, self.client)

    def tick(self):
        """A clock in the window, to show the program runs while Tk does."""
        seconds = 0
        while True:
            yield bluelet.sleep(1)
            seconds += 1
            self.clock.config(text="%d s" % seconds)

    def client(self, conn):
        try:
            while True:
                line = yield conn.readline()
                if not line:
                    return
                text = line.decode("utf-8", "replace").rstrip("\r\n")
                self.lines.insert("end", "%s:%d  %s" % (conn.addr[0], conn.addr[1], text))
                print("got:", text, flush=True)
                yield conn.sendall(line.upper())
        finally:
            conn.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=4916, help="port (0: any free one)")
    args = parser.parse_args()
    root = tkinter.Tk()
    root.title("bluelet in Tk")
    window = Window(root, args.port)
    window.start()
    root.mainloop()


if __name__ == "__main__":
    main()
