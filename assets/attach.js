// Qwen3 Chat: attaching files to a message (the server's part: chatbot/serve/ui_attach.py).
//
// A file dropped anywhere on the page, or pasted into the message box, is handed to the paperclip button's file
// input as if picked there: Gradio uploads it and the server reads it. A chip's × asks the server, through a
// hidden button, to take that file off the message.
//
// The files waiting (their names and text, as the server read them) are kept in the tab's sessionStorage beside
// the unsent text, so a reload (or the server restarting: the page reloads once it is back) loses none: on load
// they go back to the server and are chips again.
(() => {
  const KEPT = "qwen3-chat:attached";
  const parse = (text) => {
    try {
      return JSON.parse(text);
    } catch (error) {
      return null;
    }
  };

  // Keep `text` (the server's JSON list of the waiting files, [{name, text}]). Past the browser's storage (a
  // few MB per site, shared with the unsent text and, in this tab, nothing else) the largest files are kept by
  // name only, so that a reload can say which to attach again. Returns the files kept by name only, as JSON
  // ({name, chars} each; "" when all were kept): the server shows a notice naming them.
  const keep = (text) => {
    const files = parse(text);
    if (!Array.isArray(files) || !files.length) {
      sessionStorage.removeItem(KEPT);
      return "";
    }
    const bySize = files.map((file, index) => index).sort((a, b) => files[b].text.length - files[a].text.length);
    const stored = files.map((file) => ({ ...file }));
    const dropped = [];
    for (;;) {
      try {
        sessionStorage.setItem(KEPT, JSON.stringify(stored));
        break;
      } catch (error) {  // QuotaExceededError
        const index = bySize.shift();
        if (index === undefined) {
          sessionStorage.removeItem(KEPT);
          break;
        }
        stored[index] = { name: files[index].name, chars: files[index].text.length };
        dropped.push(stored[index]);
      }
    }
    if (!dropped.length) return "";
    console.warn("Qwen3 Chat: too large for this tab's storage, kept by name only:", dropped.map((f) => f.name));
    return JSON.stringify(dropped);
  };
  window.qcAttach = { remove: "", keep, kept: () => sessionStorage.getItem(KEPT) || "" };

  const fileInput = () => {
    const button = document.querySelector("#qc-attach");
    if (!button) return null;
    const before = button.previousElementSibling;  // Gradio puts the button's hidden input just before it
    if (before && before.matches("input[type=file]")) return before;
    return button.parentElement ? button.parentElement.querySelector("input[type=file]") : null;
  };
  const attachFiles = (files) => {
    const input = fileInput();
    if (!input || !files || !files.length) return false;
    const transfer = new DataTransfer();
    for (const file of files) transfer.items.add(file);
    input.files = transfer.files;
    input.dispatchEvent(new Event("change", { bubbles: true }));
    return true;
  };
  window.qcAttach.files = attachFiles;

  // Dropped files: the whole page is the drop zone (a browser would otherwise open the file in place of the
  // chat); the composer is outlined while files are dragged over the page.
  const carriesFiles = (event) => Boolean(event.dataTransfer) && [...event.dataTransfer.types].includes("Files");
  let dragDepth = 0;
  const dropping = (on) => document.body.classList.toggle("qc-dropping", on);
  document.addEventListener("dragenter", (event) => {
    if (!carriesFiles(event)) return;
    dragDepth += 1;
    dropping(true);
  }, true);
  document.addEventListener("dragleave", (event) => {
    if (!carriesFiles(event)) return;
    dragDepth = Math.max(0, dragDepth - 1);
    if (!dragDepth) dropping(false);
  }, true);
  document.addEventListener("dragover", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  }, true);
  document.addEventListener("drop", (event) => {
    if (!carriesFiles(event)) return;
    dragDepth = 0;
    dropping(false);
    event.preventDefault();
    event.stopPropagation();
    attachFiles(event.dataTransfer.files);
  }, true);

  // Pasted files (copied in a file manager): attached. Text pasted with a picture of it (an office program
  // copies both) stays a paste of the text.
  document.addEventListener("paste", (event) => {
    const box = event.target && event.target.closest && event.target.closest("#qc-message");
    const data = event.clipboardData;
    if (!box || !data || !data.files || !data.files.length || data.types.includes("text/plain")) return;
    event.preventDefault();
    attachFiles(data.files);
  }, true);

  document.addEventListener("click", (event) => {
    const cross = event.target && event.target.closest && event.target.closest("#qc-attached .qc-chip-x");
    if (!cross) return;
    event.preventDefault();
    const name = [...cross.classList].find((item) => item.startsWith("qc-detach-"));
    if (!name) return;
    window.qcAttach.remove = name.slice("qc-detach-".length);
    const button = document.querySelector("#qc-detach");
    if (button) button.click();
  }, true);
})();
