// "Create an account": POST /api/v1/users, then straight on to the login form. The password
// goes to the server once here and once in the authorization server's own form; the page never
// keeps it.

import { ApiError, register } from "./api.js";

const MESSAGES = {
  username_taken: "That username is taken. Please choose another.",
  email_taken: "An account with that email exists already. Log in instead?",
};

export function initSignup(onRegistered) {
  const form = document.getElementById("signup-form");
  const error = document.getElementById("signup-error");
  const show = (text) => {
    error.textContent = text ?? "";
    error.hidden = !text;
  };

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const invalid = [...form.elements].find((field) => field.willValidate && !field.checkValidity());
    if (invalid) {
      show(`${invalid.labels[0]?.firstChild.textContent.trim()}: ${invalid.validationMessage}`);
      invalid.focus();
      return;
    }
    show(null);
    const submit = form.querySelector("button[type=submit]");
    submit.disabled = true;
    try {
      const fields = Object.fromEntries(new FormData(form));
      await register(fields);
      form.reset();
      await onRegistered();
    } catch (err) {
      show(err instanceof ApiError ? (MESSAGES[err.code] ?? err.message) : "The server did not answer. Please try again.");
    } finally {
      submit.disabled = false;
    }
  });
}
