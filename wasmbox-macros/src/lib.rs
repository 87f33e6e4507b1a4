//! The attributes that turn a function or a type into a WasmBox guest.
//!
//! Each entry point reads as `parse -> check -> expand`; every misuse is a `syn::Error` on the
//! offending tokens, never a panic.
#![deny(missing_docs)]

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::quote;
use syn::spanned::Spanned;
use syn::{FnArg, GenericArgument, Item, ItemFn, PathArguments, ReturnType, Type};

/// Makes an `async fn run(ctx: WasmBoxContext<In, Out>)` the module's guest.
///
/// The function is started when the box is created and runs until its first pending
/// `ctx.next().await`; every message resumes it.
#[proc_macro_attribute]
pub fn wasmbox(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item: TokenStream2 = item.into();
    expand_async(attr.into(), item.clone())
        .unwrap_or_else(|e| with_item(e, item))
        .into()
}

/// Makes a type implementing `WasmBox` the module's guest.
///
/// Goes on a struct, an enum or a type alias; the type must have no generic parameters.
#[proc_macro_attribute]
pub fn wasmbox_sync(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item: TokenStream2 = item.into();
    expand_sync(attr.into(), item.clone())
        .unwrap_or_else(|e| with_item(e, item))
        .into()
}

/// The error, plus the item unchanged so that code using it reports no follow-on errors.
fn with_item(error: syn::Error, item: TokenStream2) -> TokenStream2 {
    let error = error.into_compile_error();
    quote! { #error #item }
}

fn expand_async(attr: TokenStream2, item: TokenStream2) -> syn::Result<TokenStream2> {
    check_no_arguments(&attr, "wasmbox")?;
    let func: ItemFn = syn::parse2(item)?;
    check_async_signature(&func)?;
    let name = &func.sig.ident;
    Ok(quote! {
        #func
        ::wasmbox::__export_guest!(|| ::wasmbox::__private::async_guest(#name));
    })
}

fn expand_sync(attr: TokenStream2, item: TokenStream2) -> syn::Result<TokenStream2> {
    check_no_arguments(&attr, "wasmbox_sync")?;
    let item: Item = syn::parse2(item)?;
    let (ident, generics) = match &item {
        Item::Struct(s) => (&s.ident, &s.generics),
        Item::Enum(e) => (&e.ident, &e.generics),
        Item::Type(t) => (&t.ident, &t.generics),
        other => {
            return Err(syn::Error::new_spanned(
                other,
                "#[wasmbox_sync] goes on a struct, an enum or a type alias that implements `WasmBox`",
            ));
        }
    };
    if !generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            generics,
            "#[wasmbox_sync] needs a concrete type: remove the generic parameters \
             (use a type alias to pick them)",
        ));
    }
    Ok(quote! {
        #item
        ::wasmbox::__export_guest!(::wasmbox::__private::sync_guest::<#ident>);
    })
}

fn check_no_arguments(attr: &TokenStream2, name: &str) -> syn::Result<()> {
    if attr.is_empty() {
        Ok(())
    } else {
        Err(syn::Error::new_spanned(
            attr,
            format!("#[{name}] takes no arguments"),
        ))
    }
}

fn check_async_signature(func: &ItemFn) -> syn::Result<()> {
    let sig = &func.sig;
    if sig.asyncness.is_none() {
        return Err(syn::Error::new(
            sig.fn_token.span(),
            "#[wasmbox] goes on an `async fn`: write `async fn run(ctx: WasmBoxContext<In, Out>)`",
        ));
    }
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            "#[wasmbox] functions cannot be generic: name the input and output types",
        ));
    }
    if let ReturnType::Type(_, ty) = &sig.output {
        return Err(syn::Error::new_spanned(
            ty,
            "#[wasmbox] functions return nothing: remove the return type",
        ));
    }
    if sig.inputs.len() != 1 {
        let message = format!(
            "#[wasmbox] functions take exactly one argument, `ctx: WasmBoxContext<In, Out>`; found {}",
            sig.inputs.len()
        );
        // Point at the first argument too many, or at the empty parentheses.
        return Err(match sig.inputs.iter().nth(1) {
            Some(extra) => syn::Error::new_spanned(extra, message),
            None => syn::Error::new(sig.paren_token.span.join(), message),
        });
    }
    match &sig.inputs[0] {
        FnArg::Typed(arg) if is_context_type(&arg.ty) => Ok(()),
        FnArg::Typed(arg) => Err(syn::Error::new_spanned(
            &arg.ty,
            "the argument of a #[wasmbox] function must be a `WasmBoxContext<In, Out>`",
        )),
        FnArg::Receiver(r) => Err(syn::Error::new_spanned(
            r,
            "#[wasmbox] functions are free functions: take `ctx: WasmBoxContext<In, Out>`, not `self`",
        )),
    }
}

/// `WasmBoxContext<A, B>`, possibly behind a path such as `wasmbox::WasmBoxContext`.
fn is_context_type(ty: &Type) -> bool {
    let Type::Path(path) = ty else { return false };
    let Some(last) = path.path.segments.last() else {
        return false;
    };
    if last.ident != "WasmBoxContext" {
        return false;
    }
    match &last.arguments {
        PathArguments::AngleBracketed(args) => {
            args.args.len() == 2
                && args
                    .args
                    .iter()
                    .all(|a| matches!(a, GenericArgument::Type(_)))
        }
        _ => false,
    }
}
