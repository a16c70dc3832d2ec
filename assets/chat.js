// Qwen3 Chat: the browser side of the page that Gradio's components do not cover.
//
// * qcStore: the chats kept in this browser. One localStorage entry per chat ("qwen3-chat:chat:<id>"),
//   so tabs writing different chats never overwrite each other; the id of the chat a tab shows lives in
//   that tab's sessionStorage (it survives a reload, and a new tab starts its own chat). The unsent text
//   of the message box is kept there too.
//   With chats kept on the server (window.qcChatStore === "server": --auth, one store per login), the server
//   saves, lists, loads and deletes them; the page keeps only the tab's chat id and its unsent text, and
//   hands the server ids and the search text where it would hand it chats.
// * Keyboard shortcuts (listed in the page's "Keyboard shortcuts" panel).
// * Theme (light, dark or the system's) and the mobile layout's closed side panels.
(() => {
  const PREFIX = "qwen3-chat:chat:";
  const CURRENT = "qwen3-chat:current";
  const DRAFT = "qwen3-chat:draft";
  const EDITING = "qwen3-chat:editing";  // Edit last's marker while the edited question is not sent (a reload resumes it)
  // Chats deleted in this tab: a save of a reply still on its way must not bring one back (Undo does).
  const deleted = new Set();
  const onServer = () => window.qcChatStore === "server";
  const titles = new Map();  // chats on the server: the titles this page has seen saved, to redraw the list

  const parse = (text) => {
    try {
      return JSON.parse(text);
    } catch (error) {
      return null;
    }
  };

  const store = {
    read(id) {
      return id ? parse(localStorage.getItem(PREFIX + id)) : null;
    },
    // The page's hidden fields carry chats as JSON text (only the id when the server keeps the chats).
    readText(id) {
      if (onServer()) return id ? JSON.stringify({ id }) : "";
      return (id && localStorage.getItem(PREFIX + id)) || "";
    },
    writeText(text) {
      if (text) store.write(parse(text));
    },
    writeAllText(text) {
      if (text) store.writeAll(parse(text));
    },
    all() {
      if (onServer()) return [];
      const chats = [];
      for (let i = 0; i < localStorage.length; i++) {
        const key = localStorage.key(i);
        if (key && key.startsWith(PREFIX)) {
          const chat = parse(localStorage.getItem(key));
          if (chat && chat.id && Array.isArray(chat.messages)) chats.push(chat);
        }
      }
      return chats.sort((a, b) => (b.updated || 0) - (a.updated || 0));
    },
    // [[title, id], ...] newest first; `query` matches titles and message text, case-insensitively.
    index(query) {
      if (onServer()) return { query: query || "" };  // the server searches its own
      const needle = (query || "").trim().toLowerCase();
      const matches = (chat) =>
        !needle ||
        (chat.title || "").toLowerCase().includes(needle) ||
        chat.messages.some((m) => String(m.content || "").toLowerCase().includes(needle));
      return store.all().filter(matches).map((chat) => [chat.title || "New chat", chat.id]);
    },
    write(record) {
      // An empty chat is not kept: "New chat" clicked twice leaves no clutter in the list, and a chat whose
      // first message was refused or stopped before the model began is taken out again (no ghost chat).
      if (!record || !record.id || !Array.isArray(record.messages)) return;
      if (onServer()) {  // saved there already: redraw the list when a chat is new, renamed or gone
        const title = record.messages.length ? record.title || "" : null;
        if (titles.get(record.id) !== title) store.refreshSoon();
        titles.set(record.id, title);
        return;
      }
      if (!record.messages.length) {
        if (localStorage.getItem(PREFIX + record.id) !== null) {
          localStorage.removeItem(PREFIX + record.id);
          store.refreshSoon();
        }
        return;
      }
      if (record.undeleted) {
        deleted.delete(record.id);
        record = { ...record };
        delete record.undeleted;
      }
      if (deleted.has(record.id)) return;
      const before = store.read(record.id);
      if (!before || before.title !== record.title) store.refreshSoon();  // new or renamed: redraw the list
      try {
        localStorage.setItem(PREFIX + record.id, JSON.stringify(record));
      } catch (error) {
        console.error("Qwen3 Chat: the browser's storage is full; this chat is not saved", error);
      }
    },
    writeAll(records) {
      (records || []).forEach(store.write);
    },
    remove(id) {
      if (!id) return;
      titles.delete(id);
      if (onServer()) return;
      deleted.add(id);
      localStorage.removeItem(PREFIX + id);
    },
    current() {
      return sessionStorage.getItem(CURRENT) || "";
    },
    setCurrent(id) {
      if (!id) return;
      if (id !== store.current()) sessionStorage.removeItem(EDITING);  // an edit belongs to the chat it was made in
      sessionStorage.setItem(CURRENT, id);
    },
    draft(text) {
      if (text === undefined) return sessionStorage.getItem(DRAFT) || "";
      sessionStorage.setItem(DRAFT, text || "");
      if (!text) sessionStorage.removeItem(EDITING);  // sent (or emptied): no edit is waiting any more
    },
    editing(marker) {
      if (marker === undefined) return sessionStorage.getItem(EDITING) || "";
      if (marker) sessionStorage.setItem(EDITING, marker);
      else sessionStorage.removeItem(EDITING);
    },
    download(name, data) {
      const blob = new Blob([JSON.stringify(data, null, 2)], { type: "application/json" });
      const link = document.createElement("a");
      link.href = URL.createObjectURL(blob);
      link.download = name;
      document.body.appendChild(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 10000);
    },
    downloadAll() {
      if (onServer()) return;  // the server sends the file
      store.download("qwen3-chats.json", { format: "qwen3-chat-archive", chats: store.all() });
    },
    downloadFile(file) {
      // A file Gradio made on the server (Export): downloaded with one click, no file box to find.
      if (!file || !file.url) return;
      const link = document.createElement("a");
      link.href = file.url;
      link.download = file.orig_name || "conversation.json";
      document.body.appendChild(link);
      link.click();
      link.remove();
    },
    // Redraw the chats list once typing (or another tab's writing) pauses.
    refreshSoon() {
      clearTimeout(store.refreshTimer);
      store.refreshTimer = setTimeout(() => {
        const button = document.querySelector("#qc-refresh-list");
        if (button) button.click();
      }, 150);
    },
    searchText() {
      const box = document.querySelector("#qc-search textarea, #qc-search input");
      return box ? box.value : "";
    },
  };
  window.qcStore = store;
  document.addEventListener(
    "input",
    (event) => {
      if (event.target && event.target.closest && event.target.closest("#qc-search")) store.refreshSoon();
    },
    true,
  );
  window.addEventListener("storage", (event) => {
    if (event.key === null || event.key.startsWith(PREFIX)) store.refreshSoon();  // another tab saved or deleted
  });
  // Chats on the server change from other devices too: the list is asked for again when the page is back in view.
  document.addEventListener("visibilitychange", () => {
    if (onServer() && document.visibilityState === "visible") store.refreshSoon();
  });

  // A click on an element matching ``selector`` (drawn by the server inside the chat) is ours alone: Gradio's own
  // handlers never see it; ``act`` gets the element.
  const onChatClick = (selector, act) => {
    document.addEventListener("click", (event) => {
      const target = event.target && event.target.closest && event.target.closest(selector);
      if (!target) return;
      event.preventDefault();
      event.stopPropagation();
      act(target);
    }, true);
  };

  // The ‹ › arrows under a message with versions (drawn by the server as spans whose classes name the
  // turn and the direction, "qc-turn-3 qc-step-prev"): a click asks the server, through a hidden button,
  // to show that message's other version.
  window.qcVersions = { request: "" };
  onChatClick("#qc-chat .qc-ver-step", (arrow) => {
    const turn = [...arrow.classList].find((name) => name.startsWith("qc-turn-"));
    if (!turn) return;
    window.qcVersions.request = `${turn.slice("qc-turn-".length)}:${arrow.classList.contains("qc-step-prev") ? -1 : 1}`;
    // The reader stays where the arrow was clicked (the chat redrawn below it must not pull the view down).
    scroll.follow = false;
    const button = document.querySelector("#qc-switch-version");
    if (button) button.click();
  });

  // "Continue ▸" under a cut answer: a click runs the hidden Continue event.
  onChatClick("#qc-chat .qc-continue", () => {
    const button = document.querySelector("#qc-continue-reply");
    if (button) button.click();
  });

  // A trash can beside each message's copy button: deletes that message (the server maps its position in the chat as
  // drawn to the turn, as for Gradio's own edit event). Gradio redraws its button bars, so they are checked
  // again after every change of the chat.
  window.qcDelete = { request: "" };
  const addDeleteButtons = () => {
    const chat = document.querySelector("#qc-chat");
    if (!chat) return;
    chat.querySelectorAll(".message-buttons").forEach((bar) => {
      if (bar.querySelector(".qc-delete-message")) return;
      const button = document.createElement("button");
      button.type = "button";
      button.className = "qc-delete-message";
      button.title = "Delete this message";
      button.setAttribute("aria-label", "Delete this message");
      // A trash can drawn like Gradio's own icons (no emoji font needed).
      button.innerHTML =
        '<svg width="14" height="14" viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="2" ' +
        'stroke-linecap="round" stroke-linejoin="round" aria-hidden="true"><path d="M3 6h18M8 6V4h8v2M19 6l-1 14H6L5 6"/></svg>';
      (bar.querySelector(".icon-button-wrapper") || bar).appendChild(button);
    });
  };
  onChatClick("#qc-chat .qc-delete-message", (button) => {
    const bar = button.closest(".message-buttons");
    const rows = [...document.querySelectorAll("#qc-chat .message-row")];
    // The message a bar belongs to: the last row before it in the page.
    const index = rows.filter((row) => row.compareDocumentPosition(bar) & Node.DOCUMENT_POSITION_FOLLOWING).length - 1;
    if (index < 0) return;
    window.qcDelete.request = JSON.stringify({ index });
    const hidden = document.querySelector("#qc-delete-message");
    if (hidden) hidden.click();
  });

  // Replies asked for whose first step (Send swapped for Stop) has not come back yet. A chat switch (new,
  // opened, cleared, deleted) or a Stop clicked meanwhile waits for it, a few seconds at most: the server
  // then knows of the reply before the switch, keeps it in the chat it was sent in, and waits for it to start.
  const asking = { count: 0, waiters: [] };
  window.qcAsking = {
    start() {
      asking.count += 1;
    },
    done() {
      asking.count = Math.max(0, asking.count - 1);
      if (!asking.count) asking.waiters.splice(0).forEach((resolve) => resolve());
    },
    settled(limit = 5000) {
      if (!asking.count) return Promise.resolve();
      return new Promise((resolve) => {
        asking.waiters.push(resolve);
        setTimeout(resolve, limit);
      });
    },
  };

  // The unsent text is kept on every keystroke by the page itself, not through Gradio's events: once the
  // server is out of reach Gradio sends no event at all (its own script hooks included) until it is back,
  // then reloads the page, which puts the kept text back in the box. The server empties it (a change of the
  // box's value, wired in ui.py) only once it has stored the message.
  document.addEventListener("input", (event) => {
    const box = event.target && event.target.closest && event.target.closest("#qc-message");
    if (box && event.target.tagName === "TEXTAREA") store.draft(event.target.value);
  }, true);

  // The server out of reach during a reply (stopped, restarted, the network gone): Gradio says so in a toast
  // and reloads the page once the server is back, but sends nothing meanwhile, so the reply would go on saying
  // "Writing…" beside a Stop button that can do nothing, and the chat list would keep its spinner. The page
  // says it itself when one of its own requests cannot reach the server, and takes it back on the next that does.
  const OFFLINE =
    "The server cannot be reached, so the reply stops here; what it wrote so far is kept. This page reconnects " +
    "by itself once the server is back, and a message typed meanwhile waits in the box.";
  const connection = {
    lost: false,
    markLost() {
      if (connection.lost) return;
      connection.lost = true;
      document.body.classList.add("qc-offline");
      document.querySelectorAll("#qc-chat .qc-live").forEach((live) => {
        live.dataset.qcWas = live.textContent;
        live.textContent = "interrupted: the server cannot be reached";
      });
      const stop = document.querySelector("#qc-stop");
      if (stop) {
        stop.dataset.qcWas = stop.textContent;
        stop.textContent = "Offline";
        stop.disabled = true;
      }
      const notice = document.querySelector("#qc-notice");
      if (notice) {
        const line = document.createElement("div");
        line.className = "qc-notice qc-offline-notice";
        line.setAttribute("role", "alert");
        line.textContent = OFFLINE;
        notice.appendChild(line);
      }
    },
    markBack() {
      if (!connection.lost) return;
      connection.lost = false;
      document.body.classList.remove("qc-offline");
      document.querySelectorAll("#qc-chat .qc-live[data-qc-was], #qc-stop[data-qc-was]").forEach((element) => {
        element.textContent = element.dataset.qcWas;
        delete element.dataset.qcWas;
        element.disabled = false;
      });
      document.querySelectorAll(".qc-offline-notice").forEach((line) => line.remove());
    },
  };
  const sameOrigin = (resource) => {
    try {
      const url = resource instanceof Request ? resource.url : String(resource);
      return new URL(url, location.href).origin === location.origin;
    } catch (error) {
      return false;
    }
  };
  const pageFetch = window.fetch.bind(window);
  window.fetch = (resource, init) =>
    pageFetch(resource, init).then(
      (response) => {
        if (sameOrigin(resource)) connection.markBack();
        return response;
      },
      (error) => {
        // A TypeError is a request that never got an answer; an abort (a DOMException) is the page's own doing.
        if (error instanceof TypeError && sameOrigin(resource)) connection.markLost();
        throw error;
      },
    );

  // Scrolling as in the chat apps people know: the chat follows a reply only while the reader is at the
  // bottom; scrolled up, it stays put and a "Jump to latest" button brings the reader back (and following).
  // (Gradio's own autoscroll is off: it scrolls 300 ms after each update, undoing a reader's scroll.)
  const NEAR_BOTTOM = 40;  // px: this close to the end counts as at the bottom
  const chatLog = () =>
    document.querySelector("#qc-chat .bubble-wrap") || document.querySelector("#qc-chat [role=log]");
  const atBottom = (log) => log.scrollHeight - log.scrollTop - log.clientHeight <= NEAR_BOTTOM;
  const scroll = { follow: true, button: null, lastTop: 0 };
  const showJump = (shown) => {
    const chat = document.querySelector("#qc-chat");
    if (!chat) return;
    if (!scroll.button || !chat.contains(scroll.button)) {
      scroll.button = document.createElement("button");
      scroll.button.id = "qc-jump";
      scroll.button.type = "button";
      scroll.button.textContent = "↓ Jump to latest";
      scroll.button.addEventListener("click", () => window.qcScrollDown());
      chat.appendChild(scroll.button);
    }
    scroll.button.hidden = !shown;
  };
  window.qcScrollDown = () => {
    scroll.follow = true;
    const log = chatLog();
    if (log) log.scrollTop = log.scrollHeight;
    showJump(false);
  };
  const followIfReading = () => {
    const log = chatLog();
    if (!log) return;
    if (scroll.follow) log.scrollTop = log.scrollHeight;
    showJump(!scroll.follow && !atBottom(log));
  };
  // The reader's own moves: a wheel, a drag or a key up stops following at once; reaching the end resumes.
  const readerMoved = (event) => {
    const log = chatLog();
    if (!log || !event.target || !event.target.closest || !event.target.closest("#qc-chat")) return;
    if (event.type === "wheel" && event.deltaY < 0) scroll.follow = false;
    if (event.type === "keydown" && ["PageUp", "ArrowUp", "Home"].includes(event.key)) scroll.follow = false;
    if (event.type === "scroll") {
      // Following resumes when the reader comes down to the end, never on the way up: a wheel's smooth
      // scroll starts with a step of a few pixels, still "at the bottom", which must not undo the wheel.
      const up = log.scrollTop < scroll.lastTop;
      scroll.lastTop = log.scrollTop;
      if (atBottom(log) && !up) scroll.follow = true;
      else if (event.isTrusted && scroll.dragging) scroll.follow = false;
      showJump(!scroll.follow && !atBottom(log));
    }
  };
  document.addEventListener("wheel", readerMoved, { capture: true, passive: true });
  document.addEventListener("scroll", readerMoved, true);
  document.addEventListener("keydown", readerMoved, true);
  document.addEventListener("pointerdown", (event) => {
    scroll.dragging = Boolean(event.target && event.target.closest && event.target.closest("#qc-chat"));
  }, true);
  document.addEventListener("pointerup", () => { scroll.dragging = false; }, true);
  document.addEventListener("touchmove", (event) => {
    if (event.target && event.target.closest && event.target.closest("#qc-chat")) scroll.follow = false;
  }, { capture: true, passive: true });
  let chatObserved = null;
  const observeChat = setInterval(() => {
    const chat = document.querySelector("#qc-chat");
    if (!chat || chat === chatObserved) return;
    chatObserved = chat;
    addDeleteButtons();
    // One pass per frame however many changes a redraw makes (each pass reads the layout).
    let queued = false;
    new MutationObserver(() => {
      if (queued) return;
      queued = true;
      requestAnimationFrame(() => {
        queued = false;
        followIfReading();
        addDeleteButtons();
      });
    }).observe(chat, {
      childList: true,
      subtree: true,
      characterData: true,
    });
  }, 200);
  window.addEventListener("beforeunload", () => clearInterval(observeChat));

  window.qcTheme = (choice) => {
    const dark =
      choice === "Dark" || (choice !== "Light" && window.matchMedia("(prefers-color-scheme: dark)").matches);
    document.body.classList.toggle("dark", dark);
    const app = document.querySelector("gradio-app");
    if (app) app.classList.toggle("dark", dark);
  };

  const visible = (selector) => {
    const element = document.querySelector(selector);
    return element && element.offsetParent !== null ? element : null;
  };
  const click = (selector) => {
    const element = visible(selector);
    if (element) element.click();
    return Boolean(element);
  };

  document.addEventListener(
    "keydown",
    (event) => {
      const inMessageBox = event.target && event.target.closest && event.target.closest("#qc-message");
      if (event.key === "Escape" && visible("#qc-stop")) {
        event.preventDefault();
        click("#qc-stop");
      } else if ((event.ctrlKey || event.metaKey) && event.shiftKey && event.key.toLowerCase() === "o") {
        event.preventDefault();
        click("#qc-new");
      } else if ((event.ctrlKey || event.metaKey) && event.key === "/") {
        event.preventDefault();
        const help = document.querySelector("#qc-shortcuts");
        if (help) help.scrollIntoView({ block: "center" });
        const toggle = document.querySelector("#qc-shortcuts button, #qc-shortcuts .label-wrap");
        if (toggle) toggle.click();
      } else if (event.key === "ArrowUp" && inMessageBox && !event.target.value && !event.shiftKey) {
        event.preventDefault();
        click("#qc-edit");
      }
    },
    true,
  );

  // On a phone the side panels start closed, so the chat is what the page shows first.
  const closePanelsOnPhones = () => {
    if (!window.matchMedia("(max-width: 768px)").matches) return;
    document.querySelectorAll(".sidebar.open .toggle-button, .sidebar.open button.toggle-button").forEach((b) => {
      b.click();
    });
  };
  let tries = 0;
  const waitForPanels = setInterval(() => {
    tries += 1;
    if (document.querySelector(".sidebar") || tries > 100) {
      clearInterval(waitForPanels);
      closePanelsOnPhones();
    }
  }, 50);
})();
